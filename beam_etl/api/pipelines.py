"""Pipeline registrations: the request body, its validation, and the command a run executes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from beam_etl import registry
from beam_etl.spec import TemplateError, build_spec, load_document, resolve_template_path

TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
#: flags the API sets itself: a registration may not override where a run writes or whose it is
RESERVED_OPTIONS = ("--output-dir", "--output_dir", "--state", "--run-id", "--run_id", "--tenant", "--metrics-port",
                    "--metrics_port", "--metrics-host", "--metrics_host", "--template", "--set", "--quiet",
                    "--tuned", "--report")


#: a Beam flag (``--name`` or ``--name=value``) that is not one of RESERVED_OPTIONS
BeamOption = Annotated[str, StringConstraints(
    pattern="^--(?!(?:" + "|".join(o[2:] for o in RESERVED_OPTIONS) + ")(?:=|$))[A-Za-z0-9_.-]+(?:=.*)?$")]


class PipelineIn(BaseModel):
    """A pipeline to register."""

    model_config = ConfigDict(regex_engine="python-re")  # the option pattern needs a look-ahead

    name: str = Field(..., min_length=1, max_length=200, description="Name, unique within the tenant.")
    template: str = Field(..., min_length=1, max_length=1000,
                          description="A bundled template name (e.g. quickstart); a YAML path only when the API "
                                      "runs with --allow-template-paths.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Template params; each is passed as --set params.NAME=VALUE.")
    options: list[BeamOption] = Field(default_factory=list,
                               description="Beam options passed through, e.g. --runner=DirectRunner, or "
                                           "--runner=PortableRunner --job_endpoint=HOST:PORT for a job server.")


class Registered(Protocol):
    template: str
    params: dict[str, Any]
    options: list[str]


def set_args(params: dict[str, Any]) -> list[str]:
    """``--set params.k=v`` pairs; non-strings as JSON (a YAML scalar/flow value)."""
    out = []
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out += ["--set", f"params.{key}={text}"]
    return out


def _fail(field: str, message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}])


def validate_pipeline(body: PipelineIn, allow_paths: bool) -> None:
    """Resolves and validates the template with the params applied; raises HTTP 422 naming the field."""
    if not allow_paths and not TEMPLATE_NAME_RE.match(body.template):
        raise _fail("template", f"{body.template!r}: give a bundled template name (letters, digits, _ and -); "
                                "template paths need an API started with --allow-template-paths")
    try:
        path = resolve_template_path(body.template)
        doc = load_document(path)
    except TemplateError as err:
        raise _fail("template", str(err)) from None
    known = doc.get("params") or {}
    for key in body.params:
        if key not in known:
            raise _fail(f"params.{key}", f"unknown param {key!r}; template {path.stem!r} has: {sorted(known)}")
    registry.load_builtins()
    try:
        build_spec(doc, set_args(body.params)[1::2], {"run_dir": "/validate", "run_id": "validate"})
    except TemplateError as err:
        raise _fail("params" if body.params else "template", str(err)) from None


def run_command(pipeline: Registered, run_id: str, output_dir: Path, metrics_port: int,
                default_options: list[str], replay: tuple[str, str | None, str | None] | None = None) -> list[str]:
    """The arguments after ``python`` for a run, or for a DLQ replay of ``replay = (run_dir, step, error_type)``.

    The state store URL (it may hold a password) is not among them: the run gets it in its
    environment as ``BEAM_ETL_STATE_URL`` (set by the caller, ``app.launch``), out of sight of ``ps``.
    """
    common = ["--template", pipeline.template, *set_args(pipeline.params), "--output-dir", str(output_dir),
              "--run-id", run_id, "--quiet"]
    options = [*default_options, *pipeline.options]
    if replay is None:
        return ["-m", "beam_etl.run", *common, "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
                *options]
    run_dir, step, error_type = replay
    filters = (["--step", step] if step else []) + (["--error-type", error_type] if error_type else [])
    return ["-m", "beam_etl.dlq", "replay", run_dir, *common, *filters, *options]
