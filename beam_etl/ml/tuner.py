"""The AutoTuner's model and search, without Beam: settings, measurements, the fit, the choice.

A trial runs the pipeline once with one ``Setting`` on ``rows`` input records and takes
``seconds``. The model splits a run's time into a start-up cost per execution mode
(``in_memory``/``multi_threading``/``multi_processing`` x workers) and a per-record cost:

    seconds = fixed[execution] + rows * exp(b0 + b1*x + b2*x**2 + c[execution] + d1*y + d2*y**2)

where ``x``/``y`` are log2 of the source/sink batch-size factors (1 = the template's own
value). The fixed costs come from straight-line fits of time on rows (each execution is
measured at two sample sizes); the rest is a least-squares fit of log per-record cost. The
quadratic in ``x`` gives the best batch size; ``fixed + rows * cost`` extrapolates throughput
to the full input. ``search`` drives the trials through an injected ``measure`` function and
never recommends a setting that measured slower than the defaults in the same invocation.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

MODES = ("in_memory", "multi_threading", "multi_processing")
DEFAULT_BATCH_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
_MIN_COST_SHARE = 0.05  # per-record time is at least this share of a trial's time


@dataclasses.dataclass(frozen=True, order=True)
class Setting:
    """One candidate: DirectRunner execution plus batch-size factors relative to the template's values."""

    mode: str = "in_memory"
    workers: int = 1
    batch_factor: float = 1.0
    sink_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {list(MODES)}")
        if self.workers < 1 or self.batch_factor <= 0 or self.sink_factor <= 0:
            raise ValueError(f"workers and batch factors must be positive: {self}")

    @property
    def execution(self) -> tuple[str, int]:
        return self.mode, self.workers

    def with_(self, **changes: Any) -> Setting:
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        text = f"{self.mode}x{self.workers} batch*{self.batch_factor:g}"
        return text + (f" sink*{self.sink_factor:g}" if self.sink_factor != 1.0 else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Setting:
        return cls(str(data["mode"]), int(data["workers"]), float(data["batch_factor"]),
                   float(data.get("sink_factor", 1.0)))


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One timed trial: ``rows`` records read in ``seconds``; ``phase`` says which round it was."""

    setting: Setting
    rows: int
    seconds: float
    phase: str = "screen"
    repeat: int = 0

    @property
    def records_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "repeat": self.repeat, "label": self.setting.label(), **self.setting.to_dict(),
                "rows": self.rows, "seconds": round(self.seconds, 4), "records_per_s": round(self.records_per_s, 1)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(Setting.from_dict(data), int(data["rows"]), float(data["seconds"]), str(data.get("phase", "")),
                   int(data.get("repeat", 0)))


def median_throughput(measurements: Iterable[Measurement], setting: Setting, rows: int | None = None,
                      phase: str | None = None) -> float | None:
    """Median records/s of ``setting`` (optionally at one size and in one phase), None if never measured."""
    values = [m.records_per_s for m in measurements
              if m.setting == setting and (rows is None or m.rows == rows) and (phase is None or m.phase == phase)]
    return statistics.median(values) if values else None


def fit_line(rows: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``seconds = fixed + rows * per_row`` with ``0 <= fixed <= min(seconds)``."""
    r, t = np.asarray(rows, float), np.asarray(seconds, float)
    if len(set(r.tolist())) < 2:
        return 0.0, float(np.median(t / np.maximum(r, 1.0)))
    per_row, fixed = np.polyfit(r, t, 1)
    fixed = float(min(max(fixed, 0.0), t.min()))
    per_row = float(np.mean((t - fixed) / np.maximum(r, 1.0)))
    return fixed, max(per_row, 1e-12)


@dataclasses.dataclass
class PerformanceModel:
    """The fitted model; ``throughput(setting, rows)`` predicts records/s at any input size."""

    fixed_s: dict[tuple[str, int], float]
    executions: list[tuple[str, int]]  # one-hot order; the first one is the reference
    coef: np.ndarray
    use_x2: bool
    use_y: bool
    use_y2: bool

    def _features(self, setting: Setting) -> np.ndarray:
        x, y = math.log2(setting.batch_factor), math.log2(setting.sink_factor)
        row = [1.0, x] + ([x * x] if self.use_x2 else [])
        row += [float(setting.execution == e) for e in self.executions[1:]]
        row += ([y] if self.use_y else []) + ([y * y] if self.use_y2 else [])
        return np.asarray(row)

    def knows(self, setting: Setting) -> bool:
        return setting.execution in self.executions

    def per_row_s(self, setting: Setting) -> float:
        return float(np.exp(self._features(setting) @ self.coef))

    def seconds(self, setting: Setting, rows: int) -> float:
        fixed = self.fixed_s.get(setting.execution, min(self.fixed_s.values(), default=0.0))
        return fixed + rows * self.per_row_s(setting)

    def throughput(self, setting: Setting, rows: int) -> float:
        return rows / self.seconds(setting, rows)

    def best_batch_factor(self, lo: float, hi: float) -> float:
        """The batch factor (power of two in ``[lo, hi]``) with the lowest predicted per-record cost."""
        b1 = float(self.coef[1])
        b2 = float(self.coef[2]) if self.use_x2 else 0.0
        lo_x, hi_x = math.log2(lo), math.log2(hi)
        # the vertex of a convex parabola; with no curvature, the cheaper end
        x = -b1 / (2 * b2) if b2 > 1e-9 else (lo_x if b1 > 0 else hi_x)
        return float(2 ** round(min(max(x, lo_x), hi_x)))

    def describe(self) -> dict[str, Any]:
        names = ["intercept", "log2_batch"] + (["log2_batch^2"] if self.use_x2 else [])
        names += [f"{m}x{w}" for m, w in self.executions[1:]]
        names += (["log2_sink"] if self.use_y else []) + (["log2_sink^2"] if self.use_y2 else [])
        return {"form": "seconds = fixed[execution] + rows * exp(features . coef)",
                "fixed_s": {f"{m}x{w}": round(v, 4) for (m, w), v in self.fixed_s.items()},
                "coef": {n: round(float(c), 5) for n, c in zip(names, self.coef, strict=True)},
                "reference_execution": "{}x{}".format(*self.executions[0])}


def _median_points(measurements: Sequence[Measurement]) -> dict[tuple[Setting, int], float]:
    grouped: dict[tuple[Setting, int], list[float]] = {}
    for m in measurements:
        grouped.setdefault((m.setting, m.rows), []).append(m.seconds)
    return {key: statistics.median(values) for key, values in grouped.items()}


def fit_model(measurements: Sequence[Measurement], reference: Setting | None = None) -> PerformanceModel:
    """Fits the model to timed trials (medians per setting and size); raises ValueError on none."""
    points = _median_points([m for m in measurements if m.seconds > 0 and m.rows > 0])
    if not points:
        raise ValueError("no successful measurements to fit")
    executions = sorted({s.execution for s, _ in points})
    if reference is not None and reference.execution in executions:
        executions.remove(reference.execution)
        executions.insert(0, reference.execution)
    by_setting: dict[Setting, list[tuple[int, float]]] = {}
    for (setting, rows), seconds in points.items():
        by_setting.setdefault(setting, []).append((rows, seconds))
    fixed_lists: dict[tuple[str, int], list[float]] = {}
    for setting, pairs in by_setting.items():
        if len({r for r, _ in pairs}) >= 2:
            fixed_lists.setdefault(setting.execution, []).append(fit_line(*zip(*pairs, strict=True))[0])
    shared = statistics.median([v for vs in fixed_lists.values() for v in vs]) if fixed_lists else 0.0
    fixed = {e: statistics.median(fixed_lists[e]) if e in fixed_lists else shared for e in executions}

    xs = {math.log2(s.batch_factor) for s in by_setting}
    ys = {math.log2(s.sink_factor) for s in by_setting}
    model = PerformanceModel(fixed, executions, np.zeros(0), use_x2=len(xs) >= 3, use_y=len(ys) >= 2,
                             use_y2=len(ys) >= 3)
    features, targets = [], []
    for (setting, rows), seconds in points.items():
        cost = max(seconds - fixed[setting.execution], _MIN_COST_SHARE * seconds) / rows
        features.append(model._features(setting))
        targets.append(math.log(cost))
    a, b = np.asarray(features), np.asarray(targets)
    ridge = 1e-6 * np.eye(a.shape[1])
    ridge[0, 0] = 0.0
    if len(xs) < 2:
        ridge[1, 1] = 1e6  # no batch variation: its slope stays 0
    model.coef = np.linalg.solve(a.T @ a + ridge, a.T @ b)
    return model


@dataclasses.dataclass
class Choice:
    """The recommendation and why: the chosen setting, its prediction and the defaults' figures."""

    setting: Setting
    defaults: Setting
    predicted: float
    defaults_predicted: float
    measured: float | None
    defaults_measured: float | None
    reason: str


def paired_ratios(measurements: Sequence[Measurement], defaults: Setting, setting: Setting,
                  phase: str = "confirm") -> list[tuple[float, Measurement, Measurement]]:
    """(defaults' seconds / setting's seconds, setting's run, defaults' run) per pair: in ``phase`` a
    Measurement's ``repeat`` is its pair's index, so each candidate run has a defaults run beside it."""
    base = {m.repeat: m for m in measurements if m.phase == phase and m.setting == defaults}
    return [(base[m.repeat].seconds / m.seconds, m, base[m.repeat]) for m in measurements
            if m.phase == phase and m.setting == setting and m.repeat in base and m.seconds > 0]


def choose(model: PerformanceModel, measurements: Sequence[Measurement], defaults: Setting,
           candidates: Iterable[Setting], full_rows: int, phase: str = "confirm",
           min_gain: float = 0.05) -> Choice:
    """The recommendation, from paired runs in ``phase`` and the model's full-size prediction.

    A candidate qualifies when it ran faster than the defaults run beside it in every pair, the
    median of those speed-ups is at least ``1 + min_gain``, and the model does not predict it slower
    than the defaults on the full input; the qualifying candidate with the best prediction wins,
    else the defaults. So a recommendation never measured slower than the defaults it was paired with.
    """
    base_runs = [m for m in measurements if m.phase == phase and m.setting == defaults]
    base_measured = statistics.median(m.records_per_s for m in base_runs) if base_runs else None
    base_predicted = model.throughput(defaults, full_rows)
    best = Choice(defaults, defaults, base_predicted, base_predicted, base_measured, base_measured,
                  f"no candidate beat the defaults in every paired run by a median {min_gain:.0%}: defaults kept")
    if base_measured is None:
        best.reason = "the defaults were not measured: defaults kept"
        return best
    for setting in sorted(set(candidates) - {defaults}):
        pairs = paired_ratios(measurements, defaults, setting, phase)
        if not pairs or min(r for r, _, _ in pairs) < 1.0 or statistics.median(r for r, _, _ in pairs) < 1 + min_gain:
            continue
        predicted = model.throughput(setting, full_rows)
        if predicted < base_predicted or (best.setting != defaults and predicted <= best.predicted):
            continue
        measured = statistics.median(m.records_per_s for _, m, _ in pairs)
        paired_base = statistics.median(b.records_per_s for _, _, b in pairs)
        best = Choice(setting, defaults, predicted, base_predicted, measured, paired_base,
                      f"faster than the defaults in all {len(pairs)} paired run(s) (median "
                      f"{statistics.median(r for r, _, _ in pairs):.2f}x on the sample); predicted "
                      f"{predicted / base_predicted:.2f}x at {full_rows:,} rows")
    return best


@dataclasses.dataclass
class SearchSpace:
    """What the search may try."""

    defaults: Setting
    executions: list[tuple[str, int]]
    batch_factors: list[float]
    sink_factors: list[float] = dataclasses.field(default_factory=lambda: [1.0])

    def screen(self) -> list[tuple[Setting, str]]:
        """One factor at a time around the defaults: (setting, "small"|"large") pairs."""
        d = self.defaults
        plan: list[tuple[Setting, str]] = []
        for mode, workers in self.executions:  # every execution at both sizes: its start-up cost
            setting = d.with_(mode=mode, workers=workers)
            plan += [(setting, "large"), (setting, "small")]
        plan += [(d.with_(batch_factor=f), "large") for f in self.batch_factors if f != d.batch_factor]
        plan += [(d.with_(sink_factor=f), "large") for f in self.sink_factors if f != d.sink_factor]
        seen: set[tuple[Setting, str]] = set()
        return [p for p in plan if not (p in seen or seen.add(p))]

    def grid(self) -> list[Setting]:
        return [Setting(m, w, b, s) for m, w in self.executions for b in self.batch_factors
                for s in self.sink_factors]


Measure = Callable[[Setting, str, str, int], Measurement | None]


@dataclasses.dataclass
class SearchResult:
    choice: Choice
    model: PerformanceModel
    measurements: list[Measurement]
    failed: dict[Setting, str]
    full_rows: int
    large_rows: int
    warnings: list[str] = dataclasses.field(default_factory=list)


def startup_share(model: PerformanceModel, setting: Setting, rows: int) -> float:
    """The share of a run's predicted time at ``rows`` that is start-up (fixed) cost."""
    return model.fixed_s.get(setting.execution, 0.0) / model.seconds(setting, rows)


def search(space: SearchSpace, measure: Measure, full_rows: Callable[[int], int], repeats: int = 3,
           budget_s: float = 300.0, min_gain: float = 0.05, log: Callable[[str], None] = print,
           clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Warm-up, screening (repeats in alternating order while the budget lasts), fit, confirmation, choice.

    ``measure(setting, size, phase, repeat)`` runs one trial at sample ``size`` ("small" or
    "large") and returns its Measurement, or None when the run failed (the setting is then
    dropped; the defaults failing is an error). ``full_rows(large_rows)`` gives the input size
    to predict for, from the records a large trial read.
    """
    started = clock()
    failed: dict[Setting, str] = {}
    found: list[Measurement] = []
    d = space.defaults

    def trial(setting: Setting, size: str, phase: str, repeat: int) -> Measurement | None:
        m = measure(setting, size, phase, repeat)
        if m is None:
            failed.setdefault(setting, "the run failed")
            if setting == d:
                raise RuntimeError(f"the pipeline failed with the default settings ({setting.label()})")
            return None
        found.append(m)
        return m

    log(f"warm-up: {d.label()} on the small sample")
    warm = trial(d, "small", "warmup", 0)
    plan = space.screen()
    per_trial = warm.seconds + 0.5 if warm else 1.0
    for repeat in range(repeats):
        if repeat and clock() - started + per_trial * (len(plan) + 3 * repeats) > budget_s:
            log(f"screening: budget reached after {repeat} repeat(s)")
            break
        for i, (setting, size) in enumerate(plan if repeat % 2 == 0 else plan[::-1], 1):  # ABBA: drift cancels
            if setting in failed:
                continue
            m = trial(setting, size, "screen", repeat)
            if m is not None:
                log(f"screen {repeat + 1}/{repeats} [{i}/{len(plan)}] {setting.label():38} {size:5} "
                    f"{m.rows:>10,} rows {m.seconds:7.2f} s {m.records_per_s:>12,.0f} rec/s")
        done = [m.seconds for m in found if m.phase == "screen"]
        per_trial = statistics.median(done) + 0.3 if done else per_trial
    screened = [m for m in found if m.phase == "screen"]
    if not any(m.setting == d for m in screened):
        raise RuntimeError("the default settings were never measured")
    large_rows = max(m.rows for m in screened)
    total = full_rows(large_rows)
    model = fit_model(screened, reference=d)
    usable = [s for s in space.grid() if s not in failed and model.knows(s)]
    lo, hi = min(space.batch_factors), max(space.batch_factors)
    refined = [s.with_(batch_factor=model.best_batch_factor(lo, hi)) for s in usable]
    proposals = sorted(set(usable + refined), key=lambda s: -model.throughput(s, total))
    best_measured = max((s for s, _ in plan if s not in failed),
                        key=lambda s: median_throughput(screened, s, large_rows) or 0.0)
    confirm = list(dict.fromkeys([d, *proposals[:1], best_measured]))
    log("model: " + ", ".join(f"{s.label()} -> {model.throughput(s, total):,.0f} rec/s predicted"
                              for s in confirm) + f" at {total:,} rows")
    spent = clock() - started
    candidates = confirm[1:]
    per_round = per_trial * 2 * max(len(candidates), 1)
    rounds = max(1, min(repeats, int((budget_s - spent) // max(per_round, 1e-9)))) if candidates else 0
    pair = 0
    for repeat in range(rounds):  # each candidate next to its own defaults run; ABBA order
        for setting in candidates:
            if setting in failed:
                continue
            for s in (d, setting) if (repeat + pair) % 2 == 0 else (setting, d):
                m = trial(s, "large", "confirm", pair)
                if m is not None:
                    log(f"confirm {repeat + 1}/{rounds} pair {pair + 1} {s.label():38} {m.seconds:7.2f} s "
                        f"{m.records_per_s:>12,.0f} rec/s")
            pair += 1
    model = fit_model([m for m in found if m.phase in ("screen", "confirm")], reference=d)
    confirmed = [m for m in found if m.phase == "confirm"]
    choice = choose(model, confirmed, d, [s for s in candidates if s not in failed], total, min_gain=min_gain)
    if not candidates:  # the model and the screening both put the defaults first
        base = model.throughput(d, total)
        measured = median_throughput(screened, d, large_rows)
        choice = Choice(d, d, base, base, measured, measured, "the defaults measured and predicted best: kept")
    warnings = []
    share = startup_share(model, d, large_rows)
    if share > 0.8:
        warnings.append(f"start-up is {share:.0%} of a trial on the large sample: per-record costs are barely "
                        "measurable; use a larger --sample-rows for a prediction worth trusting")
        log("warning: " + warnings[-1])
    return SearchResult(choice, model, found, failed, total, large_rows, warnings)
