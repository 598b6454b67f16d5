"""Templates: YAML -> validated pydantic models.

Loading order: parse YAML, apply ``--set dotted.key=value`` overrides, substitute
``{{ var }}`` (template params and run variables) and ``${ENV}`` / ``${ENV:-default}``,
validate the document, then validate each transform's ``config`` against the model its
``type`` registered. Every error names the YAML path, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from beam_etl import registry
from beam_etl.ops.secrets import is_secret_env, register_secret

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PACKAGE_TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_VAR_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
DEFAULT_DLQ: dict[str, Any] = {
    "type": "WriteToJsonl",
    "config": {"path": "{{ run_dir }}/dlq/", "json_fields": ["record"], "mode": "append"},
}


class TemplateError(ValueError):
    """A template problem; the message names the YAML path, the value and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorHandling(_Strict):
    """``error_handling: {output: errors}`` exposes dead letters as ``<name>.errors``."""

    output: str = Field(pattern=_NAME_RE)


class TransformSpec(_Strict):
    """One source, step or sink."""

    name: str = Field(pattern=_NAME_RE)
    type: str
    input: str | list[str] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    error_handling: ErrorHandling | None = None
    contract: dict[str, Any] | None = None
    description: str = ""

    def inputs(self) -> list[str]:
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ErrorBudget(_Strict):
    """Fails the run when dead letters exceed a fraction of records read or a count."""

    max_fraction: float | None = Field(default=None, ge=0, le=1)
    max_count: int | None = Field(default=None, ge=0)


class DlqSpec(_Strict):
    """Where dead letters go: any sink ``type`` with its ``config``."""

    type: str = "WriteToJsonl"
    config: dict[str, Any] = Field(default_factory=dict)


class StateSpec(_Strict):
    """Where incremental sources keep their cursors (beam_etl.ops.state)."""

    url: str | None = Field(default=None, description="sqlite:///PATH, a file path, or postgresql://user:pw@host/db; "
                                                      "default <output dir>/beam_etl_state.sqlite")


class OptimizeSpec(_Strict):
    """How the pipeline may be rewritten for speed without changing its results (beam_etl.pruning)."""

    prune_columns: bool = Field(
        default=True, description="Sources pass on only the columns a later transform reads (after the source "
                                  "has validated every column); false keeps every column to the end.")


class PipelineSpec(_Strict):
    """A whole template."""

    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    error_budget: ErrorBudget = Field(default_factory=ErrorBudget)
    dlq: DlqSpec = Field(default_factory=DlqSpec)
    state: StateSpec = Field(default_factory=StateSpec)
    optimize: OptimizeSpec = Field(default_factory=OptimizeSpec)
    sources: list[TransformSpec] = Field(min_length=1)
    steps: list[TransformSpec] = Field(default_factory=list)
    sinks: list[TransformSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_graph(self) -> PipelineSpec:
        check_graph(self)
        return self

    def transforms(self) -> list[tuple[str, int, TransformSpec]]:
        """(section, index, spec) for every transform in template order."""
        return [
            (section, i, t)
            for section in ("sources", "steps", "sinks")
            for i, t in enumerate(getattr(self, section))
        ]


def contract_step_name(sink: str) -> str:
    """Name of the EnforceContract step that a sink's ``contract:`` runs before the sink."""
    return f"{sink}_contract"


def check_graph(spec: PipelineSpec) -> None:
    """Checks names are unique and every input names an earlier transform."""
    known: dict[str, str] = {}
    for section, i, t in spec.transforms():
        where = f"{section}[{i}] ({t.name})"
        if t.name in known:
            raise ValueError(f"{where}.name: {t.name!r} is already used by {known[t.name]}; names must be unique")
        if section == "sources" and t.input is not None:
            raise ValueError(f"{where}.input: sources take no input (got {t.input!r})")
        if t.contract is not None and section != "sinks":
            raise ValueError(f"{where}.contract: only sinks take a contract; use an EnforceContract step here")
        if t.contract is not None and contract_step_name(t.name) in known:
            raise ValueError(f"{where}.contract: the contract runs as step {contract_step_name(t.name)!r}, a name "
                             f"already used by {known[contract_step_name(t.name)]}")
        if section != "sources" and not t.inputs():
            raise ValueError(f"{where}.input: a {section[:-1]} needs an input; one of {sorted(known) or 'none yet'}")
        for ref in t.inputs():
            base = ref.split(".", 1)[0]
            if base not in known or known[base].startswith("sinks") and "." not in ref:
                choices = sorted(n for n, w in known.items() if not w.startswith("sinks"))
                hint = difflib.get_close_matches(base, choices, n=1)
                raise ValueError(
                    f"{where}.input: {ref!r} is not an earlier source or step"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {choices}")
                )
        known[t.name] = where


def _yaml_path(loc: tuple[Any, ...], doc: dict[str, Any]) -> str:
    """Turns a pydantic ``loc`` into ``steps[1] (dedup).config.keys``."""
    parts: list[str] = []
    node: Any = doc
    for key in loc:
        if isinstance(key, int):
            parts[-1] = f"{parts[-1]}[{key}]" if parts else f"[{key}]"
            if isinstance(node, list) and 0 <= key < len(node):
                node = node[key]
                if isinstance(node, dict) and "name" in node:
                    parts[-1] += f" ({node['name']})"
            continue
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _format_validation_error(err: ValidationError, doc: dict[str, Any], prefix: tuple[Any, ...] = ()) -> str:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        path = _yaml_path(loc, doc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (value {e.get('input')!r}); remove it or check the spelling")
        elif e["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            shows_value = "input" in e and not isinstance(e.get("input"), dict)
            lines.append(f"{path}: {msg} (got {e.get('input')!r})" if shows_value else f"{path}: {msg}")
    return "\n".join(lines)


def _unknown_key_hint(model: type[BaseModel], key: str) -> str:
    hint = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {sorted(model.model_fields)}"


def _validate_sink_contract(t: TransformSpec, doc: dict[str, Any], loc: tuple[Any, ...],
                            configs: dict[str, BaseModel], problems: list[str]) -> None:
    """A sink's ``contract:`` is an EnforceContract config (table defaults to the sink's name)."""
    entry = registry.lookup("EnforceContract")
    assert entry is not None
    try:
        config = entry.config_model.model_validate(t.contract)
    except ValidationError as err:
        problems.append(_format_validation_error(err, doc, loc))
        return
    if getattr(config, "table", None) is None:
        config = config.model_copy(update={"table": t.name})
    configs[contract_step_name(t.name)] = config


def validate_configs(spec: PipelineSpec, doc: dict[str, Any]) -> dict[str, BaseModel]:
    """Validates each transform's config with its registered model; returns them by name."""
    configs: dict[str, BaseModel] = {}
    problems: list[str] = []
    expected_kind = {"sources": "source", "steps": "step", "sinks": "sink"}
    for section, i, t in spec.transforms():
        where = f"{section}[{i}] ({t.name})"
        entry = registry.lookup(t.type)
        if entry is None or entry.kind != expected_kind[section]:
            allowed = [e.name for e in registry.entries(expected_kind[section])]
            hint = difflib.get_close_matches(t.type, allowed, n=1)
            problems.append(
                f"{where}.type: {t.type!r} is not a known {expected_kind[section]}"
                + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Allowed: {', '.join(allowed)}"
            )
            continue
        try:
            configs[t.name] = entry.config_model.model_validate(t.config)
        except ValidationError as err:
            text = _format_validation_error(err, doc, (section, i, "config"))
            for e in err.errors():
                if e["type"] == "extra_forbidden":
                    text += _unknown_key_hint(entry.config_model, str(e["loc"][-1]))
            problems.append(text)
        if t.contract is not None:
            _validate_sink_contract(t, doc, (section, i, "contract"), configs, problems)
    dlq_entry = registry.lookup(spec.dlq.type)
    if dlq_entry is None or dlq_entry.kind != "sink":
        problems.append(f"dlq.type: {spec.dlq.type!r} is not a known sink")
    else:
        try:
            configs["__dlq__"] = dlq_entry.config_model.model_validate(spec.dlq.config)
        except ValidationError as err:
            problems.append(_format_validation_error(err, doc, ("dlq", "config")))
    if problems:
        raise TemplateError("template is invalid:\n  " + "\n  ".join("\n".join(problems).splitlines()))
    return configs


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits ``a.b.c=value``; the value is parsed as a YAML scalar."""
    if "=" not in text:
        raise TemplateError(f"--set {text!r}: expected dotted.key=value, e.g. sources.orders.config.path=in.csv")
    key, raw = text.split("=", 1)
    if not key:
        raise TemplateError(f"--set {text!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(doc: dict[str, Any], path: list[str], value: Any) -> None:
    """Sets ``value`` at ``path``; list items are addressed by name or index."""
    node: Any = doc
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        shown = ".".join(path[: depth + 1])
        if isinstance(node, list):
            match = next((x for x in node if isinstance(x, dict) and x.get("name") == part), None)
            if match is None and part.isdigit() and int(part) < len(node):
                match = node[int(part)]
            if match is None:
                names = [x.get("name") for x in node if isinstance(x, dict)]
                raise TemplateError(f"--set {'.'.join(path)}: no item {part!r} at {shown}; items: {names}")
            if last:
                raise TemplateError(f"--set {'.'.join(path)}: cannot replace a whole list item")
            node = match
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise TemplateError(f"--set {'.'.join(path)}: {shown} is a value, not a mapping")


def _substitute(node: Any, variables: dict[str, Any], path: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, variables, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        out = []
        for i, v in enumerate(node):
            label = f"{path}[{i}]" + (f" ({v['name']})" if isinstance(v, dict) and "name" in v else "")
            out.append(_substitute(v, variables, label))
        return out
    if not isinstance(node, str):
        return node

    def env(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            if is_secret_env(name):  # PGHOST stays readable in messages; PGPASSWORD never shows
                register_secret(os.environ[name])
            return os.environ[name]
        if default is not None:
            return default
        raise TemplateError(
            f"{path}: environment variable ${{{name}}} is not set; export it or write ${{{name}:-default}}"
        )

    def var(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix("params.")
        if name not in variables:
            raise TemplateError(f"{path}: unknown variable {{{{ {name} }}}}; known: {sorted(variables)}")
        return str(variables[name])

    whole = _VAR_RE.fullmatch(node.strip())
    if whole and whole.group(1).removeprefix("params.") in variables:
        value = variables[whole.group(1).removeprefix("params.")]
        return value if not isinstance(value, str) else _ENV_RE.sub(env, value)
    return _ENV_RE.sub(env, _VAR_RE.sub(var, node))


def resolve_template_path(name_or_path: str) -> Path:
    """Finds a template by path, or by name in templates/ (repo) or the package copy."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    for folder in (TEMPLATES_DIR, PACKAGE_TEMPLATES_DIR):
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.exists():
                return candidate
    names = [p.stem for p in list_templates()]
    hint = difflib.get_close_matches(name_or_path, names, n=1)
    raise TemplateError(
        f"--template {name_or_path!r}: no such file or template"
        + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Known templates: {', '.join(names)}"
    )


def list_templates() -> list[Path]:
    """Template files shipped in templates/ (and inside the package)."""
    seen: dict[str, Path] = {}
    for folder in (PACKAGE_TEMPLATES_DIR, TEMPLATES_DIR):
        if folder.is_dir():
            for p in sorted(folder.glob("*.yaml")):
                seen[p.stem] = p
    return [seen[k] for k in sorted(seen)]


def load_document(path: Path) -> dict[str, Any]:
    """Reads a template file as a YAML mapping."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise TemplateError(f"{path}: a template must be a YAML mapping with name, sources, steps and sinks")
    return doc


def build_spec(
    doc: dict[str, Any], overrides: list[str] | None = None, run_vars: dict[str, Any] | None = None
) -> tuple[PipelineSpec, dict[str, BaseModel]]:
    """Applies overrides and variables, validates; returns the spec and per-transform configs."""
    doc = yaml.safe_load(yaml.safe_dump(doc, sort_keys=False))  # deep copy, keys in template order
    for text in overrides or []:
        path, value = parse_override(text)
        apply_override(doc, path, value)
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise TemplateError("params: must be a mapping of name: default value")
    variables = {"package_data": str(PACKAGE_DATA_DIR), **(run_vars or {})}
    variables.update(_substitute(params, variables, "params"))
    body = {k: v for k, v in doc.items() if k != "params"}
    body.setdefault("dlq", DEFAULT_DLQ)
    if body["dlq"] == {"type": "WriteToJsonl"} or body["dlq"] == {"type": "WriteToJsonl", "config": {}}:
        body["dlq"] = DEFAULT_DLQ
    resolved = _substitute(body, variables, "")
    resolved["params"] = {k: variables[k] for k in params}
    try:
        spec = PipelineSpec.model_validate(resolved)
    except ValidationError as err:
        detail = _format_validation_error(err, resolved).replace("\n", "\n  ")
        raise TemplateError("template is invalid:\n  " + detail) from err
    return spec, validate_configs(spec, resolved)
