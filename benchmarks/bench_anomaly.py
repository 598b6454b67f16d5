#!/usr/bin/env python
"""ROC-AUC of beam_etl's anomaly detectors against plain scikit-learn IsolationForest.

    python benchmarks/bench_anomaly.py              # seeds 0-9: subsamples of the real sets, forests
    python benchmarks/bench_anomaly.py --seeds 3 --sets wine quickstart
    python benchmarks/bench_anomaly.py --write      # also updates the anomaly section of BENCHMARKS.md

Evaluation sets (fit and score on the same unlabelled data, labels only for the AUC):
* ``wine``: sklearn's wine, classes 1 and 2 as inliers, class 0 subsampled to 10 anomalies (as ODDS);
* ``breast_cancer``: sklearn's WDBC, benign as inliers, malignant subsampled to ~10 % of rows;
* ``synthetic``: correlated Gaussian numeric fields plus a category and a code field, with planted
  outliers: global extremes, single-field spikes, joint (correlation-breaking) points, rare
  categories and codes off their pattern;
* ``synthetic_numeric``: the same rows without the text fields and without the text-planted anomalies
  (the city column is an object array: a fixed-width ``<U6`` one truncated "Atlantis" to "Atlant",
  which kept those rows, labelled but with nothing anomalous left, in this set before);
* ``quickstart``: the bundled ``beam_etl/data/customers_orders.csv`` typed as the ``anomaly_tagging``
  template types it (each physical line parsed on its own; lines with the wrong number of fields and
  rows whose ``amount`` (float), ``quantity`` (int) or ``order_date`` (date) does not cast go to the
  DLQ, i.e. are dropped; blanks are nulls), scored on the template's fields (numeric ``amount``,
  ``quantity``; text ``email``, ``phone``, ``country``, ``category``, ``status``; date ``order_date``).
  Labels: the 30 planted amount outliers (``scripts/make_sample_data.py``'s ``planted_outlier_ids``),
  80-150x their category's typical amount. The data is fixed; the seed only seeds the forests.
The real sets are re-subsampled per seed; the table shows the mean AUC over seeds and the mean and
smallest per-seed difference ensemble - reference. The reference is ``IsolationForest(random_state=seed)``
with default parameters on the numeric fields only (nulls imputed with the column median, as our
model does; IsolationForest takes no NaN), fitted in the same run; ours uses default ``AnomalyConfig``
(``random_state=seed``, plus the field lists the template names for ``quickstart``), no per-set tuning.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beam_etl.ml.anomaly import DETECTORS, AnomalyConfig, AnomalyModel

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_CSV = ROOT / "beam_etl" / "data" / "customers_orders.csv"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:anomaly start -->", "<!-- bench:anomaly end -->"

Dataset = tuple[pa.Table, np.ndarray]
COLUMNS = (*DETECTORS, "ensemble")


def _subsampled(x: np.ndarray, target: np.ndarray, anomaly_class: int, n_anomalies: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    inliers = np.flatnonzero(target != anomaly_class)
    outliers = rng.choice(np.flatnonzero(target == anomaly_class), size=n_anomalies, replace=False)
    idx = rng.permutation(np.concatenate([inliers, outliers]))
    labels = (target[idx] == anomaly_class).astype(int)
    table = pa.table({f"f{i}": x[idx, i] for i in range(x.shape[1])})
    return table, labels


def wine(seed: int) -> Dataset:
    data = load_wine()
    return _subsampled(data.data, data.target, 0, 10, seed)


def breast_cancer(seed: int) -> Dataset:
    data = load_breast_cancer()  # target 0 = malignant (212), 1 = benign (357)
    n_benign = int((data.target == 1).sum())
    return _subsampled(data.data, data.target, 0, round(n_benign / 9), seed)


CITIES = ["Berlin", "Paris", "Rome", "Madrid", "Vienna"]


def synthetic(seed: int, n: int = 5000, n_each: int = 20) -> Dataset:
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.8, 0.3, 0.0], [0.8, 1.0, 0.3, 0.0], [0.3, 0.3, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    x = rng.multivariate_normal(np.zeros(4), cov, size=n)
    x[:, 3] = np.exp(x[:, 3])  # one skewed field
    cities = rng.choice(CITIES, size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1]).astype(object)  # object: no "<U6" truncation
    codes = np.array([f"AB-{v:04d}" for v in rng.integers(0, 10_000, size=n)], dtype=object)
    labels = np.zeros(n, dtype=int)
    rows = rng.permutation(n)[: 5 * n_each].reshape(5, n_each)
    x[rows[0]] = rng.normal(0, 1, size=(n_each, 4)) * 6  # global extremes
    x[rows[1], 2] += rng.choice([-1, 1], size=n_each) * rng.uniform(4, 7, size=n_each)  # single-field spike
    x[rows[2], 0], x[rows[2], 1] = 2.0, -2.0  # breaks the 0.8 correlation, each value ordinary
    cities[rows[3]] = rng.choice(["Atlantis", "Gotham"], size=n_each)  # rare categories
    codes[rows[4]] = [f"ab{v}x" for v in rng.integers(0, 100, size=n_each)]  # off the code pattern
    labels[rows.ravel()] = 1
    table = pa.table(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "city": cities, "code": codes.astype(str)}
    )
    return table, labels


def synthetic_numeric(seed: int) -> Dataset:
    """``synthetic`` without its text fields and text-planted anomalies: a fair field for a numeric-only forest."""
    table, labels = synthetic(seed)
    city = np.array(table.column("city").to_pylist(), dtype=object)
    code = np.array(table.column("code").to_pylist(), dtype=object)
    keep = np.isin(city, CITIES) & np.array([c.startswith("AB-") for c in code])
    return table.select(["a", "b", "c", "d"]).filter(pa.array(keep)), labels[keep]


QUICKSTART_TYPES = {"amount": "float", "quantity": "int", "order_date": "date"}
QUICKSTART_FIELDS = {
    "numeric_fields": ["amount", "quantity"],
    "text_fields": ["email", "phone", "country", "category", "status"],
    "date_fields": ["order_date"],
}


def quickstart(seed: int) -> Dataset:
    """The bundled sample CSV typed as templates/anomaly_tagging.yaml types it; DLQ rows dropped."""
    del seed  # fixed data; the seed only seeds the forests
    from beam_etl.transforms.mapping import cast_array, parse_cast_type  # Beam-side typing, as the pipeline does

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_sample_data import planted_outlier_ids

    lines = QUICKSTART_CSV.read_text(encoding="utf-8").splitlines()
    names = next(csv.reader([lines[0]]))
    rows = [r for r in (next(csv.reader([line])) for line in lines[1:] if line) if len(r) == len(names)]
    cols = {name: pa.array([r[i] or None for r in rows], pa.string()) for i, name in enumerate(names)}
    failed = np.zeros(len(rows), dtype=bool)
    for name, spec in QUICKSTART_TYPES.items():
        cols[name], bad = cast_array(cols[name], parse_cast_type(spec))
        failed |= bad
    table = pa.table(cols).filter(pa.array(~failed))
    planted = planted_outlier_ids()
    ids = [(v or "").strip().upper() for v in table.column("order_id").to_pylist()]
    return table, np.array([v in planted for v in ids], dtype=int)


@dataclass(frozen=True)
class EvalSet:
    name: str
    load: Callable[[int], Dataset]
    config: dict = field(default_factory=dict)  # fields the template names; nothing tuned


SETS = (
    EvalSet("wine", wine),
    EvalSet("breast_cancer", breast_cancer),
    EvalSet("synthetic", synthetic),
    EvalSet("synthetic_numeric", synthetic_numeric),
    EvalSet("quickstart", quickstart, QUICKSTART_FIELDS),
)


def _reference_matrix(table: pa.Table, fields: list[str]) -> np.ndarray:
    """The numeric fields as float64, nulls/NaN imputed with the column median (IsolationForest takes no NaN)."""
    x = np.column_stack([table.column(n).cast(pa.float64()).to_numpy(zero_copy_only=False) for n in fields])
    return np.where(np.isnan(x), np.nanmedian(x, axis=0), x)


@dataclass
class Result:
    n: int
    anomalies: int
    aucs: dict[str, list[float]]
    seconds: dict[str, float]

    def mean(self, name: str) -> float:
        return float(np.mean(self.aucs[name])) if self.aucs[name] else float("nan")

    @property
    def margins(self) -> np.ndarray:
        return np.array(self.aucs["ensemble"]) - np.array(self.aucs["reference"])


def evaluate(spec: EvalSet, seeds: list[int], override: dict | None = None) -> Result:
    """Per-seed AUC of each detector, the ensemble and the reference; fit+score seconds summed over seeds."""
    aucs: dict[str, list[float]] = {name: [] for name in (*COLUMNS, "reference")}
    seconds = {"ours": 0.0, "reference": 0.0}
    sizes: list[tuple[int, int]] = []
    for seed in seeds:
        table, labels = spec.load(seed)
        sizes.append((table.num_rows, int(labels.sum())))
        t0 = time.perf_counter()
        model = AnomalyModel(AnomalyConfig(random_state=seed, **{**spec.config, **(override or {})})).fit(table)
        scores, _, _ = model.score(table)
        seconds["ours"] += time.perf_counter() - t0
        aucs["ensemble"].append(roc_auc_score(labels, scores))
        for name, raw in model.detector_scores(table).items():
            aucs[name].append(roc_auc_score(labels, raw))
        t0 = time.perf_counter()
        numeric = _reference_matrix(table, model.numeric_fields)
        forest = IsolationForest(random_state=seed).fit(numeric)
        reference = -forest.score_samples(numeric)
        seconds["reference"] += time.perf_counter() - t0
        aucs["reference"].append(roc_auc_score(labels, reference))
    return Result(*sizes[0], aucs, seconds)


def markdown(results: dict[str, Result], seeds: list[int], elapsed: float) -> str:
    head = ["dataset", "n", "anomalies", *COLUMNS, "IsolationForest", "ensemble - IF (mean / min over seeds)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, str(r.n), str(r.anomalies)]
        cells += ["-" if np.isnan(r.mean(c)) else f"{r.mean(c):.3f}" for c in COLUMNS]
        cells += [f"{r.mean('reference'):.3f}", f"{r.margins.mean():+.4f} / {r.margins.min():+.4f}"]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Per-seed ensemble - IsolationForest (seed " + f"{seeds[0]} first):", ""]
    out += ["| dataset | " + " | ".join(str(s) for s in seeds) + " |", "|" + "---|" * (len(seeds) + 1)]
    for name, r in results.items():
        out.append(f"| {name} | " + " | ".join(f"{m:+.4f}" for m in r.margins) + " |")
    ours = sum(r.seconds["ours"] for r in results.values())
    ref = sum(r.seconds["reference"] for r in results.values())
    out += ["", (
        f"Time: whole run {elapsed:.0f} s for {len(results)} sets x {len(seeds)} seeds; fit + score summed over "
        f"them: ensemble ({len(DETECTORS)} detectors) {ours:.1f} s, reference IsolationForest {ref:.1f} s "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared)."
    )]
    return "\n".join(out)


def write_section(table: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the generated table inside the anomaly section (between the markers), keeping the prose."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(START), text.index(END)
    section = text[start:end]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    section = re.sub(r"on \d{4}-\d{2}-\d{2} \d{2}:\d{2} \(UTC\)", f"on {stamp} (UTC)", section)
    begin = section.index("<!-- bench:anomaly table -->")
    stop = section.index("<!-- bench:anomaly table end -->")
    section = section[:begin] + "<!-- bench:anomaly table -->\n" + table + "\n" + section[stop:]
    path.write_text(text[:start] + section + text[end:], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="subsample/forest seeds per dataset (0..N-1)")
    parser.add_argument("--sets", nargs="*", default=[s.name for s in SETS], help="evaluation sets to run")
    parser.add_argument("--write", action="store_true", help="update the anomaly section of BENCHMARKS.md")
    parser.add_argument("--override", type=json.loads, default=None,
                        help='AnomalyConfig options as JSON for ablations, e.g. \'{"weights": {"zscore": 1}}\'')
    args = parser.parse_args()
    if args.write and args.override:
        parser.error("--write records the defaults; drop --override")
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    results = {s.name: evaluate(s, seeds, args.override) for s in SETS if s.name in args.sets}
    table = markdown(results, seeds, time.perf_counter() - t0)
    print(table)
    if args.write:
        write_section(table)
        print(f"updated {BENCHMARKS_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
