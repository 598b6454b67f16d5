"""Column-level lineage rules: how each step type's output columns derive from its input columns.

A column's lineage is kept in terms of *source columns* ``(source node, column)``, the only
columns OpenLineage knows about (intermediate steps are not datasets). A ``Frame`` is what one
transform outputs: its known columns (each with the source columns it derives from, DIRECT or
INDIRECT, and a subtype) and the dataset-level INDIRECT dependencies (filters, groupings, sorts)
accumulated on the way. A frame may be *open*: columns it does not list are resolved on demand
(a source whose schema is unknown, an opaque user function).

``RULES`` maps a step ``type`` to a rule ``(config, input frame, step name) -> output frame``.
A type without a rule gets ``opaque`` (every output column derives from every input column,
flagged opaque), so new step types degrade gracefully; ``OPAQUE_STEPS`` lists the types that are
opaque on purpose (user functions). Rules import the transforms they read lazily, so this module
stays free of Beam at import time.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

DIRECT, INDIRECT = "DIRECT", "INDIRECT"
IDENTITY, TRANSFORMATION, AGGREGATION = "IDENTITY", "TRANSFORMATION", "AGGREGATION"
FILTER, GROUP_BY, SORT, WINDOW, CONDITIONAL = "FILTER", "GROUP_BY", "SORT", "WINDOW", "CONDITIONAL"
_RANK = {IDENTITY: 0, TRANSFORMATION: 1, AGGREGATION: 2}

Origin = tuple[str, str]  # (source node, column)
Key = tuple[Origin, str]  # (origin, DIRECT | INDIRECT)

#: the dead-letter envelope's columns and types (``beam_etl.ops.dlq.DLQ_SCHEMA``)
ENVELOPE = {"record": "string", "error_type": "string", "error": "string", "exception": "string",
            "step": "string", "source": "string", "attempt": "int64", "pipeline": "string", "run_id": "string",
            "failed_at": "string"}
QUALITY_COLUMNS = {"_quality_score": "double", "_quality_flags": "list<string>"}
ANOMALY_COLUMNS = {"anomaly_score": "double", "is_anomaly": "bool", "anomaly_reasons": "list<string>"}
CLUSTER_COLUMNS = {"cluster_id": "int64", "duplicate_count": "int64"}
_TYPE_NAMES = {"int": "int64", "integer": "int64", "float": "double", "double": "double", "str": "string",
               "string": "string", "bool": "bool", "boolean": "bool", "date": "date32[day]",
               "timestamp": "timestamp[us]", "datetime": "timestamp[us]"}


def type_label(declared: str | None) -> str | None:
    """A declared type (``float``, ``int64``, ``decimal(10,2)``) as an Arrow-style label."""
    if declared is None:
        return None
    text = str(declared).strip()
    return _TYPE_NAMES.get(text.lower(), text)


@dataclasses.dataclass(frozen=True)
class Derivation:
    """How an output column depends on one source column."""

    kind: str = DIRECT
    subtype: str = IDENTITY
    steps: tuple[str, ...] = ()  # the steps that changed the value (or filtered, grouped, sorted by it)
    opaque: bool = False

    def then(self, subtype: str, step: str, opaque: bool = False) -> Derivation:
        """This derivation followed by a DIRECT ``subtype`` in ``step`` (INDIRECT stays INDIRECT)."""
        if self.kind == INDIRECT:
            return dataclasses.replace(self, opaque=self.opaque or opaque)
        strongest = subtype if _RANK[subtype] > _RANK[self.subtype] else self.subtype
        steps = self.steps + ((step,) if subtype != IDENTITY and step not in self.steps else ())
        return Derivation(DIRECT, strongest, steps, self.opaque or opaque)

    def merge(self, other: Derivation) -> Derivation:
        """Two paths to the same source column: the stronger subtype, every step."""
        if self.kind == DIRECT:
            subtype = max(self.subtype, other.subtype, key=lambda s: _RANK.get(s, 0))
        else:
            subtype = self.subtype
        steps = self.steps + tuple(s for s in other.steps if s not in self.steps)
        return Derivation(self.kind, subtype, steps, self.opaque or other.opaque)


@dataclasses.dataclass
class Column:
    """One column of a frame: its type (when known) and the source columns it derives from."""

    type: str | None = None
    inputs: dict[Key, Derivation] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Frame:
    """What a transform outputs, as far as lineage goes."""

    columns: dict[str, Column] = dataclasses.field(default_factory=dict)
    indirect: dict[tuple[Origin, str], tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fallback: Callable[[str], Column | None] | None = None  # resolves columns the frame does not list

    def get(self, name: str) -> Column | None:
        """The column ``name``: a listed one, else what the fallback resolves, else None."""
        column = self.columns.get(name)
        if column is None and self.fallback is not None:
            column = self.fallback(name)
        return column

    def refs(self, names: Iterable[str]) -> list[Column]:
        """The columns ``names`` that resolve (unknown names are skipped: lineage never fails a run)."""
        return [c for c in (self.get(n) for n in dict.fromkeys(names)) if c is not None]


Rule = Callable[[Any, Frame, str], Frame]
RULES: dict[str, Rule] = {}
#: step types that are opaque on purpose: arbitrary user code (unless its config declares ``lineage:``)
OPAQUE_STEPS = frozenset({"MapBatches", "MapRecords"})


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Registers a lineage rule for step types ``names``."""

    def decorate(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn

    return decorate


def rule_for(type_name: str) -> Rule:
    """The rule of a step type; ``opaque`` for types without one."""
    return RULES.get(type_name, opaque)


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def _add(inputs: dict[Key, Derivation], key: Key, derivation: Derivation) -> None:
    inputs[key] = inputs[key].merge(derivation) if key in inputs else derivation


def derive(columns: Iterable[Column], subtype: str, step: str, *, kind: str = DIRECT,
           opaque: bool = False) -> dict[Key, Derivation]:
    """The inputs of a column computed in ``step`` from ``columns``.

    ``kind=DIRECT``: each source column's derivation followed by ``subtype``; ``kind=INDIRECT``:
    the source columns become INDIRECT dependencies of ``subtype`` (for example CONDITIONAL).
    """
    out: dict[Key, Derivation] = {}
    for column in columns:
        for (origin, was), derivation in column.inputs.items():
            if kind == DIRECT:
                new = derivation.then(subtype, step, opaque)
            elif was == DIRECT:
                new = Derivation(INDIRECT, subtype, (step,), derivation.opaque or opaque)
            else:
                new = derivation
            _add(out, (origin, new.kind), new)
    return out


def add_indirect(frame: Frame, columns: Iterable[Column], subtype: str, step: str) -> None:
    """Records that every row of ``frame`` depends on ``columns`` (filter, grouping, sort, window)."""
    for column in columns:
        for (origin, kind), derivation in column.inputs.items():
            key = (origin, subtype if kind == DIRECT else derivation.subtype)
            steps = frame.indirect.get(key, ())
            frame.indirect[key] = steps + ((step,) if step not in steps else ())


def passthrough(frame: Frame) -> Frame:
    """A copy of ``frame`` whose unknown columns resolve through it (rows and columns unchanged)."""
    return Frame(dict(frame.columns), dict(frame.indirect), frame.get)


def union(frames: list[Frame]) -> Frame:
    """Several inputs flattened into one: columns of the same name merge their lineage."""
    if len(frames) == 1:
        return frames[0]

    def merged(columns: list[Column]) -> Column | None:
        if not columns:
            return None
        types = {c.type for c in columns}
        out = Column(types.pop() if len(types) == 1 else None, {})
        for column in columns:
            for key, derivation in column.inputs.items():
                _add(out.inputs, key, derivation)
        return out

    names = list(dict.fromkeys(n for f in frames for n in f.columns))
    columns = {n: merged([f.columns[n] for f in frames if n in f.columns]) for n in names}
    frame = Frame({n: c for n, c in columns.items() if c is not None}, {},
                  lambda name: merged([c for c in (f.get(name) for f in frames) if c is not None]))
    for f in frames:
        for key, steps in f.indirect.items():
            known = frame.indirect.get(key, ())
            frame.indirect[key] = known + tuple(s for s in steps if s not in known)
    return frame


def dead_letter_frame(frames: list[Frame], step: str) -> Frame:
    """Dead letters (the envelope): ``record`` carries the rows that failed in ``frames``."""
    origins = dict.fromkeys(o for f in frames for c in f.columns.values() for (o, kind) in c.inputs if kind == DIRECT)
    record_inputs = {(o, DIRECT): Derivation(DIRECT, TRANSFORMATION, (step,)) for o in origins}
    columns = {name: Column(t, record_inputs if name == "record" else {}) for name, t in ENVELOPE.items()}
    return Frame(columns, {})


def as_names(value: Any) -> list[str]:
    """A config value naming one column, several, or none, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


# --------------------------------------------------------------------------------------
# Expressions (the language of Filter / WithColumns / having)
# --------------------------------------------------------------------------------------


def expression_fields(text: str) -> tuple[list[str], list[str]]:
    """Columns an expression reads: (value columns, condition-only columns of ``if``/``if_else``).

    The authoritative list comes from the expression compiler of ``beam_etl.transforms.mapping``;
    the syntax tree only tells which of those sit in a condition.
    """
    from beam_etl.transforms.mapping import compile_expression

    fields = list(compile_expression(text, "lineage").fields)
    value: list[str] = []
    condition: list[str] = []

    def visit(node: ast.AST, in_condition: bool) -> None:
        if isinstance(node, ast.Name):
            (condition if in_condition else value).append(node.id)
        elif isinstance(node, ast.IfExp):
            visit(node.test, True)
            visit(node.body, in_condition)
            visit(node.orelse, in_condition)
        elif isinstance(node, ast.Call):
            fn = node.func.id if isinstance(node.func, ast.Name) else ""
            if fn == "col" and node.args and isinstance(node.args[0], ast.Constant):
                (condition if in_condition else value).append(str(node.args[0].value))
                return
            for i, arg in enumerate(node.args):
                visit(arg, in_condition or (fn == "if_else" and i == 0))
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, in_condition)

    visit(ast.parse(text.strip(), mode="eval").body, False)
    value = [f for f in fields if f in value or f not in condition]
    return value, [f for f in fields if f not in value]


_FUNCTION_TYPES = {"to_date": "date32[day]", "int": "int64", "float": "double", "str": "string", "year": "int64",
                   "month": "int64", "day": "int64", "hour": "int64", "len": "int32", "lower": "string",
                   "upper": "string", "strip": "string", "concat": "string"}


def _expression_type(text: str, frame: Frame) -> str | None:
    """The type of an expression's result where it is plain to see."""
    from beam_etl.transforms.mapping import compile_expression

    body = ast.parse(text.strip(), mode="eval").body
    if isinstance(body, ast.Name):
        column = frame.get(body.id)
        return column.type if column is not None else None
    if isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id in _FUNCTION_TYPES:
        return _FUNCTION_TYPES[body.func.id]
    if compile_expression(text, "lineage").boolean:
        return "bool"
    if isinstance(body, ast.BinOp) and isinstance(body.op, ast.Div):
        return "double"
    return None


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@rule("Select")
def select(config: Any, frame: Frame, step: str) -> Frame:
    """A subset of the columns, in the listed order; nothing else."""
    return Frame({n: c for n in config.fields if (c := frame.get(n)) is not None}, dict(frame.indirect))


@rule("Rename")
def rename(config: Any, frame: Frame, step: str) -> Frame:
    """Renamed columns keep their lineage (IDENTITY) and position."""
    mapping: dict[str, str] = dict(config.fields)
    columns = {mapping.get(name, name): column for name, column in frame.columns.items()}
    for old, new in mapping.items():
        if old not in frame.columns and (column := frame.get(old)) is not None:
            columns[new] = column

    def fallback(name: str) -> Column | None:
        return None if name in mapping or name in mapping.values() else frame.get(name)

    return Frame(columns, dict(frame.indirect), fallback)


@rule("Cast")
def cast(config: Any, frame: Frame, step: str) -> Frame:
    """Each cast column: the same column, TRANSFORMATION, with its new type."""
    out = passthrough(frame)
    for name, target in config.fields.items():
        if (column := frame.get(name)) is not None:
            out.columns[name] = Column(type_label(target), derive([column], TRANSFORMATION, step))
    return out


@rule("Filter")
def filter_rows(config: Any, frame: Frame, step: str) -> Frame:
    """Columns unchanged; every row now depends on the columns the condition reads (INDIRECT FILTER)."""
    out = passthrough(frame)
    value, condition = expression_fields(config.expression)
    add_indirect(out, frame.refs(value + condition), FILTER, step)
    return out


@rule("WithColumns")
def with_columns(config: Any, frame: Frame, step: str) -> Frame:
    """Each computed column derives from the columns its expression reads (in order: later ones see
    earlier ones); a bare column name is IDENTITY, a condition's columns are INDIRECT CONDITIONAL."""
    out = passthrough(frame)
    for name, text in config.columns.items():
        value, condition = expression_fields(text)
        plain = ast.parse(text.strip(), mode="eval").body
        subtype = IDENTITY if isinstance(plain, ast.Name) else TRANSFORMATION
        inputs = derive(out.refs(value), subtype, step)
        for key, derivation in derive(out.refs(condition), CONDITIONAL, step, kind=INDIRECT).items():
            _add(inputs, key, derivation)
        out.columns[name] = Column(_expression_type(text, out), inputs)
    return out


@rule("NullRemover")
def null_remover(config: Any, frame: Frame, step: str) -> Frame:
    """Columns unchanged (fills are TRANSFORMATION); dropped rows depend on the checked columns."""
    from beam_etl.transforms.clean import DropRowsConfig

    configured = {"drop_rows": config.drop_rows is not None, "drop_columns": config.drop_columns is not None,
                  "fill": bool(config.fill) or bool(config.fill_strategy)}
    actions = as_names(config.mode) or [a for a, on in configured.items() if on] or ["drop_rows"]
    out = passthrough(frame)
    if "fill" in actions:
        for name in dict.fromkeys([*config.fill, *config.fill_strategy]):
            if (column := frame.get(name)) is not None:
                out.columns[name] = Column(column.type, derive([column], TRANSFORMATION, step))
    if "drop_rows" in actions:
        spec = config.drop_rows if config.drop_rows is not None else "any"
        fields = spec.fields if isinstance(spec, DropRowsConfig) else spec
        names = list(frame.columns) if fields in ("any", "all") else as_names(fields)
        add_indirect(out, frame.refs(names), FILTER, step)
    return out


@rule("QualityScorer")
def quality_scorer(config: Any, frame: Frame, step: str) -> Frame:
    """Columns unchanged; ``_quality_score``/``_quality_flags`` derive from every checked column."""
    excluded = set(config.exclude or ())
    checked = list(config.rules)
    if config.infer:
        checked += [n for n in frame.columns if n not in QUALITY_COLUMNS]
    columns = frame.refs(n for n in checked if n not in excluded)
    out = passthrough(frame)
    for name, type_ in QUALITY_COLUMNS.items():
        out.columns[name] = Column(type_, derive(columns, TRANSFORMATION, step))
    if config.min_score is not None:
        add_indirect(out, columns, FILTER, step)
    return out


@rule("ExactDeduplicator", "StreamingDeduplicate")
def deduplicate(config: Any, frame: Frame, step: str) -> Frame:
    """Columns unchanged; which rows survive depends on the keys (FILTER) and the ordering (SORT)."""
    out = passthrough(frame)
    keys = as_names(config.keys) or list(frame.columns)
    add_indirect(out, frame.refs(keys), FILTER, step)
    ordering = as_names(getattr(config, "order_by", None))
    if getattr(config, "keep", None) == "best_quality":
        ordering.append("_quality_score")
    if getattr(config, "time_domain", None) == "event" and getattr(config, "event_time", None):
        add_indirect(out, frame.refs([config.event_time]), WINDOW, step)
    add_indirect(out, frame.refs(ordering), SORT, step)
    return out


@rule("FuzzyDeduplicator")
def fuzzy_deduplicate(config: Any, frame: Frame, step: str) -> Frame:
    """Columns unchanged; ``cluster_id``/``duplicate_count`` derive from the compared fields."""
    compared = [c.field for c in config.comparisons]
    for key in [*config.blocking, *config.sorted_keys]:
        compared += as_names(key.fields)
    compared += as_names(config.exact_fields) + (list(config.embedding.fields) if config.embedding else [])
    columns = frame.refs(compared)
    out = passthrough(frame)
    out.columns["cluster_id"] = Column("int64", derive(columns, TRANSFORMATION, step))
    out.columns["duplicate_count"] = Column("int64", derive(columns, AGGREGATION, step))
    if config.strategy != "tag_only":
        add_indirect(out, columns, FILTER, step)
        add_indirect(out, frame.refs(as_names(config.score_column)), SORT, step)
    if config.streaming is not None and config.streaming.time_field:
        add_indirect(out, frame.refs([config.streaming.time_field]), WINDOW, step)
    return out


def _aggregate(aggregations: Any, keys: list[str], frame: Frame, step: str) -> dict[str, Column]:
    """Key columns (IDENTITY) and one AGGREGATION column per output of each aggregation."""
    from beam_etl.transforms.aggregate import parse_aggregations

    columns = {k: c for k in keys if (c := frame.get(k)) is not None}
    for agg in parse_aggregations(aggregations):
        source = frame.get(agg.field) if agg.field else None
        inputs = derive([source], AGGREGATION, step) if source is not None else {}
        if agg.order_by and (order := frame.get(agg.order_by)) is not None:
            for key, derivation in derive([order], SORT, step, kind=INDIRECT).items():
                _add(inputs, key, derivation)
        if agg.op in ("count", "count_all", "count_distinct"):
            type_: str | None = "int64"
        elif agg.op in ("avg", "stddev", "variance", "quantile"):
            type_ = "double"
        else:
            type_ = source.type if source is not None else None
        for name in agg.output_names:
            columns[name] = Column(type_, dict(inputs))
    return columns


def _having(having: Any, out: Frame, step: str) -> None:
    if having is None:
        return
    from beam_etl.transforms.aggregate import having_text

    value, condition = expression_fields(having_text(having))
    add_indirect(out, out.refs(value + condition), FILTER, step)


@rule("GroupByAggregate")
def group_by_aggregate(config: Any, frame: Frame, step: str) -> Frame:
    """One row per group: keys IDENTITY, each aggregation from its field (counts from no column);
    every row depends on the keys (GROUP_BY) and on the having condition (FILTER)."""
    keys = as_names(config.keys)
    out = Frame(_aggregate(config.aggregations, keys, frame, step), dict(frame.indirect))
    add_indirect(out, frame.refs(keys), GROUP_BY, step)
    _having(config.having, out, step)
    return out


@rule("WindowAggregate")
def window_aggregate(config: Any, frame: Frame, step: str) -> Frame:
    """As GroupByAggregate per window; ``window_start``/``window_end`` derive from the event time."""
    keys = as_names(config.keys)
    event_time = frame.refs([config.event_time])
    bounds = {n: Column("timestamp[us]", derive(event_time, TRANSFORMATION, step))
              for n in ("window_start", "window_end")}
    columns = {**bounds, **_aggregate(config.aggregations, keys, frame, step)}
    if config.pane_column:
        columns[config.pane_column] = Column("string", {})
    out = Frame(columns, dict(frame.indirect))
    add_indirect(out, frame.refs(keys), GROUP_BY, step)
    add_indirect(out, event_time, WINDOW, step)
    return out


def _of_type(frame: Frame, names: list[str] | None, accepts: Callable[[str], bool]) -> list[str]:
    """``names``, or (when None) every known column whose type fits or is unknown."""
    if names is not None:
        return list(names)
    return [n for n, c in frame.columns.items() if c.type is None or accepts(c.type)]


@rule("AnomalyDetector")
def anomaly_detector(config: Any, frame: Frame, step: str) -> Frame:
    """Columns unchanged; ``anomaly_score``/``is_anomaly``/``anomaly_reasons`` derive from the scored
    fields (streaming: the key fields pick the statistics, INDIRECT GROUP_BY)."""
    keys: list[str] = []
    if config.streaming is not None:
        fields = list(config.streaming.numeric_fields)
        keys = list(config.streaming.key_fields)
    else:
        numeric = _of_type(frame, config.numeric_fields,
                           lambda t: t.startswith(("int", "uint", "float", "double", "decimal")))
        text = _of_type(frame, config.text_fields, lambda t: t in ("string", "large_string"))
        dates = _of_type(frame, config.date_fields, lambda t: t.startswith(("date", "timestamp")))
        fields = [n for n in dict.fromkeys(numeric + text + dates) if n not in ANOMALY_COLUMNS]
    inputs = derive(frame.refs(fields), TRANSFORMATION, step)
    for key, derivation in derive(frame.refs(keys), GROUP_BY, step, kind=INDIRECT).items():
        _add(inputs, key, derivation)
    out = passthrough(frame)
    for name, type_ in ANOMALY_COLUMNS.items():
        out.columns[name] = Column(type_, dict(inputs))
    return out


@rule("InferSchema")
def infer_schema(config: Any, frame: Frame, step: str) -> Frame:
    """A profile of the input: every output column aggregates every input column."""
    inputs = derive(list(frame.columns.values()), AGGREGATION, step)
    if config.emit == "fields":
        from beam_etl.ml._infer_model import FIELDS_SCHEMA

        return Frame({f.name: Column(str(f.type), dict(inputs)) for f in FIELDS_SCHEMA}, {})
    return Frame({}, {}, lambda name: Column(None, dict(inputs)))


@rule("EnforceContract")
def enforce_contract(config: Any, frame: Frame, step: str) -> Frame:
    """Columns of a declared schema take its types (TRANSFORMATION); with ``columns`` other than
    evolve, only the schema's columns remain. A schema from the registry or a file: unchanged."""
    schema = config.schema_
    if not isinstance(schema, Mapping):
        return passthrough(frame)
    modes = config.contract
    columns_mode = modes if isinstance(modes, str) else modes.columns
    keep_others = columns_mode == "evolve"
    out = Frame({}, dict(frame.indirect), frame.get if keep_others else None)
    if keep_others:
        out.columns.update({n: c for n, c in frame.columns.items() if n not in schema})
    for name, declared in schema.items():
        column = frame.get(name)
        if column is not None:
            out.columns[name] = Column(type_label(declared), derive([column], TRANSFORMATION, step))
        elif config.fill_missing:
            out.columns[name] = Column(type_label(declared), {})
    return out


def opaque(config: Any, frame: Frame, step: str) -> Frame:
    """A step lineage cannot see into: every output column derives from every input column, flagged
    opaque. A config with ``lineage: {output column: [input columns]}`` is taken at its word instead
    (columns it does not name pass through unchanged)."""
    declared = getattr(config, "lineage", None)
    if isinstance(declared, Mapping):
        out = passthrough(frame)
        for name, sources in declared.items():
            out.columns[str(name)] = Column(None, derive(frame.refs(as_names(sources)), TRANSFORMATION, step))
        return out
    inputs = derive(list(frame.columns.values()), TRANSFORMATION, step, opaque=True)
    columns = {name: Column(None, dict(inputs)) for name in frame.columns}
    return Frame(columns, dict(frame.indirect), lambda name: Column(None, dict(inputs)))
