#!/usr/bin/env python
"""ROC-AUC of beam_etl's anomaly detectors against plain scikit-learn IsolationForest.

    python benchmarks/bench_anomaly.py              # 5 subsample seeds per real dataset
    python benchmarks/bench_anomaly.py --seeds 1

Evaluation sets (fit and score on the same unlabelled data, labels only for the AUC):
* ``wine``: sklearn's wine, classes 1 and 2 as inliers, class 0 subsampled to 10 anomalies (as ODDS);
* ``breast_cancer``: sklearn's WDBC, benign as inliers, malignant subsampled to ~10 % of rows;
* ``synthetic``: correlated Gaussian numeric fields plus a category and a code field, with planted
  outliers: global extremes, single-field spikes, joint (correlation-breaking) points, rare
  categories and codes off their pattern;
* ``synthetic_numeric``: the same rows without the text fields and without the text-planted anomalies.
The real sets are re-subsampled per seed; the table shows the mean AUC over seeds. The reference
is ``IsolationForest(random_state=seed)`` with default parameters on the numeric fields only;
ours uses default ``AnomalyConfig`` (``random_state=seed``) with no per-dataset tuning.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from beam_etl.ml.anomaly import AnomalyConfig, AnomalyModel

Dataset = tuple[pa.Table, np.ndarray]
COLUMNS = ("zscore", "robust_z", "iqr", "isolation_forest", "pattern", "ensemble")


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


def synthetic(seed: int, n: int = 5000, n_each: int = 20) -> Dataset:
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.8, 0.3, 0.0], [0.8, 1.0, 0.3, 0.0], [0.3, 0.3, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    x = rng.multivariate_normal(np.zeros(4), cov, size=n)
    x[:, 3] = np.exp(x[:, 3])  # one skewed field
    cities = rng.choice(["Berlin", "Paris", "Rome", "Madrid", "Vienna"], size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
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
    city = np.array(table.column("city").to_pylist())
    code = np.array(table.column("code").to_pylist())
    keep = ~(np.isin(city, ["Atlantis", "Gotham"]) | ~np.char.startswith(code.astype(str), "AB-"))
    return table.select(["a", "b", "c", "d"]).filter(pa.array(keep)), labels[keep]


def evaluate(load: Callable[[int], Dataset], seeds: list[int]) -> dict[str, float]:
    """Mean AUC per column over seeds, plus n and anomaly counts from the first seed."""
    aucs: dict[str, list[float]] = {name: [] for name in (*COLUMNS, "reference")}
    for seed in seeds:
        table, labels = load(seed)
        model = AnomalyModel(AnomalyConfig(random_state=seed)).fit(table)
        scores, _, _ = model.score(table)
        aucs["ensemble"].append(roc_auc_score(labels, scores))
        for name, raw in model.detector_scores(table).items():
            aucs[name].append(roc_auc_score(labels, raw))
        numeric = np.column_stack([table.column(n).to_numpy() for n in model.numeric_fields])
        forest = IsolationForest(random_state=seed).fit(numeric)
        aucs["reference"].append(roc_auc_score(labels, -forest.score_samples(numeric)))
    table, labels = load(seeds[0])
    out = {name: float(np.mean(v)) if v else float("nan") for name, v in aucs.items()}
    return {"n": table.num_rows, "anomalies": int(labels.sum()), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="subsample/forest seeds per dataset (0..N-1)")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    head = ["dataset", "n", "anomalies", *COLUMNS, "IsolationForest", "ensemble >= IF"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, load in (
        ("wine", wine),
        ("breast_cancer", breast_cancer),
        ("synthetic", synthetic),
        ("synthetic_numeric", synthetic_numeric),
    ):
        r = evaluate(load, seeds)
        cells = [name, str(r["n"]), str(r["anomalies"])]
        cells += ["-" if np.isnan(r[c]) else f"{r[c]:.3f}" for c in COLUMNS]
        cells += [f"{r['reference']:.3f}", "yes" if r["ensemble"] >= r["reference"] else "no"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
