"""Fuzzy deduplication core (no Beam): exact pass, blocking, pair scoring, EM, clustering, merge.

    result = find_duplicates(table, FuzzyConfig(
        comparisons=(Comparison("surname"), Comparison("dob", "date", scale=365)),
        blocking=(BlockKey("surname", "soundex"),), sorted_keys=(BlockKey("dob"),)))
    kept = result.apply(table)          # kept rows + a cluster_id column

Rows whose normalised ``exact_fields`` are identical are collapsed first; only their
representatives reach candidate generation. Candidates are the union of blocking keys and a
sorted neighbourhood; pairs are classified by a Fellegi-Sunter model fitted by EM (default) or a
threshold on a weighted mean of similarities; matched pairs are clustered by connected
components and each cluster is merged by a strategy. Every dropped row names its kept row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from beam_etl.hashing import hash_columns
from beam_etl.ml import _fuzzy_blocking as blk
from beam_etl.ml import _fuzzy_embed as emb
from beam_etl.ml import _fuzzy_scoring as sc
from beam_etl.ml._fuzzy_blocking import soundex
from beam_etl.ml._fuzzy_embed import EmbeddingMatch
from beam_etl.ml._fuzzy_scoring import Encoder, FellegiSunter, fit_em

__all__ = ["BlockKey", "Comparison", "EmbeddingMatch", "FellegiSunter", "FuzzyConfig", "FuzzyResult", "candidate_pairs",
           "cluster_pairs", "compare_pairs", "exact_duplicates", "find_duplicates", "fit_em", "merge_clusters",
           "soundex"]

Data = pa.Table | pa.RecordBatch
Strategy = Literal["keep_first", "keep_last", "keep_best", "tag_only"]
METHODS = ("jaro_winkler", "levenshtein", "exact", "numeric", "date", "embedding")
DEFAULT_THRESHOLDS = {"jaro_winkler": (0.8, 0.9, 1.0), "levenshtein": (0.6, 0.8, 1.0), "exact": (1.0,),
                      "numeric": (0.5, 1.0), "date": (0.5, 1.0), "embedding": (0.8, 0.9)}
_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y")
CLUSTER_COLUMN = "cluster_id"
COUNT_COLUMN = "duplicate_count"


@dataclass(frozen=True)
class BlockKey:
    """A candidate key: named transform (exact|prefix|soundex|first_token|sorted_tokens) of fields."""

    fields: tuple[str, ...] | str
    transform: str = "exact"
    length: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            object.__setattr__(self, "fields", (self.fields,))
        if not self.fields:
            raise ValueError("BlockKey.fields: give at least one field name")
        if self.transform not in blk.TRANSFORMS:
            raise ValueError(f"BlockKey.transform: {self.transform!r} is not one of {sorted(blk.TRANSFORMS)}")


@dataclass(frozen=True)
class Comparison:
    """One field comparator; similarities are binned into levels by ``thresholds`` for EM."""

    field: str
    method: str = "jaro_winkler"
    thresholds: tuple[float, ...] = ()
    weight: float = 1.0
    scale: float = 1.0
    encoder: Encoder | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Comparison({self.field!r}).method: {self.method!r} is not one of {METHODS}")
        if self.method == "embedding" and self.encoder is None:
            raise ValueError(f"Comparison({self.field!r}): method 'embedding' needs encoder=callable")
        if self.scale <= 0:
            raise ValueError(f"Comparison({self.field!r}).scale: {self.scale} must be > 0")
        if not self.thresholds:
            object.__setattr__(self, "thresholds", DEFAULT_THRESHOLDS[self.method])

    @property
    def n_levels(self) -> int:
        return len(self.thresholds) + 1


@dataclass(frozen=True)
class FuzzyConfig:
    """Everything ``find_duplicates`` needs; validated at construction."""

    comparisons: tuple[Comparison, ...]
    blocking: tuple[BlockKey, ...] = ()
    sorted_keys: tuple[BlockKey, ...] = ()
    window: int = 5
    max_block_size: int = 500
    classifier: Literal["em", "threshold"] = "em"
    threshold: float = 0.5
    exact_fields: tuple[str, ...] | None = None
    strategy: Strategy = "keep_first"
    score_column: str | None = None
    workers: int = 1
    embedding: EmbeddingMatch | None = None

    def __post_init__(self) -> None:
        if not self.comparisons:
            raise ValueError("FuzzyConfig.comparisons: give at least one Comparison")
        if not self.blocking and not self.sorted_keys:
            raise ValueError("FuzzyConfig: give blocking and/or sorted_keys (no all-pairs comparison)")
        if self.window < 2:
            raise ValueError(f"FuzzyConfig.window: {self.window} must be >= 2")
        if self.classifier not in ("em", "threshold"):
            raise ValueError(f"FuzzyConfig.classifier: {self.classifier!r} is not 'em' or 'threshold'")
        if self.strategy not in ("keep_first", "keep_last", "keep_best", "tag_only"):
            raise ValueError(f"FuzzyConfig.strategy: {self.strategy!r} is not a merge strategy")
        if self.strategy == "keep_best" and not self.score_column:
            raise ValueError("FuzzyConfig.score_column: strategy 'keep_best' needs a score column")

    def string_fields(self) -> list[str]:
        """Fields read as normalised strings."""
        names = [f for k in (*self.blocking, *self.sorted_keys) for f in k.fields]
        names += [c.field for c in self.comparisons if c.method not in ("numeric", "date")]
        names += list(self.exact_fields or [c.field for c in self.comparisons])
        names += list(self.embedding.fields) if self.embedding else []
        return list(dict.fromkeys(names))


@dataclass
class FuzzyResult:
    """Per row: cluster id (smallest row index in the cluster), kept flag, kept row it duplicates."""

    cluster_id: np.ndarray
    keep: np.ndarray
    duplicate_of: np.ndarray
    left: np.ndarray
    right: np.ndarray
    score: np.ndarray
    matched: np.ndarray
    model: FellegiSunter | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def apply(self, data: Data) -> pa.Table:
        """Kept rows of ``data`` with ``cluster_id`` and ``duplicate_count`` columns appended."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        sizes = np.bincount(self.cluster_id, minlength=len(self.cluster_id))
        idx = np.flatnonzero(self.keep)
        out = table.take(pa.array(idx))
        out = out.append_column(CLUSTER_COLUMN, pa.array(self.cluster_id[idx], pa.int64()))
        return out.append_column(COUNT_COLUMN, pa.array(sizes[self.cluster_id[idx]] - 1, pa.int64()))


# --- column preparation --------------------------------------------------------------------------

def normalised_strings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Lower-cased, trimmed, whitespace-collapsed strings as an object array; null -> ""."""
    col = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    col = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(col), r"\s+", " "))
    return np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object)


def numeric_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values; nulls and unparsable strings -> NaN."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.cast(pc.if_else(pc.match_substring_regex(column, r"^\s*[-+]?\d*\.?\d+([eE][-+]?\d+)?\s*$"),
                                    pc.utf8_trim_whitespace(column), None), pa.float64())
    return np.asarray(pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))


def date_days(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Days since the epoch as float64; strings parsed by the first matching format; else NaN."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32())
        return np.asarray(pc.cast(days, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    out = np.full(len(text), np.nan)
    for fmt in _DATE_FORMATS:
        ts = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        secs = np.asarray(pc.cast(ts, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
        ok = np.asarray(ts.is_valid().to_numpy(zero_copy_only=False), dtype=bool) & np.isnan(out)
        out[ok] = np.floor(secs[ok] / 86400.0)
    return out


def _key(strings: dict[str, np.ndarray], key: BlockKey) -> np.ndarray:
    return blk.build_key([blk.transform_values(strings[f], key.transform, key.length) for f in key.fields])


# --- pipeline stages -----------------------------------------------------------------------------

def exact_duplicates(strings: dict[str, np.ndarray], fields: Sequence[str]) -> np.ndarray:
    """For each row, the first row with identical normalised ``fields`` (itself when unique)."""
    n = len(strings[fields[0]])
    h = hash_columns([pa.array(strings[f], pa.string()) for f in fields], n)
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    return first[inv.reshape(-1)].astype(np.int64)


def candidate_pairs(strings: dict[str, np.ndarray], config: FuzzyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Union of blocking pairs and sorted-neighbourhood pairs over the given rows."""
    n = len(next(iter(strings.values())))
    sets = [blk.block_pairs(_key(strings, k), config.max_block_size) for k in config.blocking]
    sets += [blk.neighbourhood_pairs(_key(strings, k), config.window) for k in config.sorted_keys]
    return blk.union_pairs(sets, n)


def compare_pairs(data: Data, strings: dict[str, np.ndarray], rows: np.ndarray, left: np.ndarray,
                  right: np.ndarray, comparisons: Sequence[Comparison], workers: int = 1) -> np.ndarray:
    """(pairs x comparisons) similarity matrix, NaN where a side is missing.

    ``left``/``right`` index into ``rows`` (the rows of ``data`` under comparison).
    """
    sims = np.empty((len(left), len(comparisons)))
    for k, c in enumerate(comparisons):
        if c.method in ("numeric", "date"):
            raw = data.column(c.field)
            vals = (numeric_values(raw) if c.method == "numeric" else date_days(raw))[rows]
            similarity = sc.numeric_similarity if c.method == "numeric" else sc.date_similarity
            sims[:, k] = similarity(vals[left], vals[right], c.scale)
        elif c.method == "embedding":
            s = strings[c.field]
            sims[:, k] = sc.embedding_similarity(s[left], s[right], c.encoder)
        else:
            s = strings[c.field]
            sims[:, k] = sc.string_similarity(s[left], s[right], c.method, workers)
    return sims


def classify(sims: np.ndarray, config: FuzzyConfig) -> tuple[np.ndarray, FellegiSunter | None]:
    """Pair score (EM posterior or weighted mean similarity) and the fitted model, if any."""
    if config.classifier == "threshold":
        w = np.array([c.weight for c in config.comparisons])
        present = ~np.isnan(sims)
        denom = (present * w).sum(axis=1)
        return np.where(denom > 0, np.nansum(sims * w, axis=1) / np.maximum(denom, 1e-12), 0.0), None
    levels = np.column_stack([sc.to_levels(sims[:, k], c.thresholds) for k, c in enumerate(config.comparisons)])
    if len(levels) == 0:
        return np.zeros(0), None
    model = fit_em(levels, [c.n_levels for c in config.comparisons])
    return model.probability(levels), model


def cluster_pairs(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected components; the cluster id of a row is the smallest row index in its cluster."""
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def merge_clusters(cluster_id: np.ndarray, strategy: Strategy = "keep_first",
                   score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, duplicate_of): each dropped row maps to its cluster's kept row; kept rows get -1."""
    n = len(cluster_id)
    idx = np.arange(n)
    if strategy == "tag_only":
        return np.ones(n, bool), np.full(n, -1, np.int64)
    if strategy == "keep_first":
        rep = cluster_id.astype(np.int64)
    elif strategy == "keep_last":
        last = np.full(n, -1, np.int64)
        np.maximum.at(last, cluster_id, idx)
        rep = last[cluster_id]
    elif strategy == "keep_best":
        if score is None:
            raise ValueError("merge_clusters: strategy 'keep_best' needs score")
        s = np.where(np.isnan(score), -np.inf, np.asarray(score, dtype=np.float64))
        order = np.lexsort((idx, -s, cluster_id))
        firsts = order[np.r_[True, np.diff(cluster_id[order]) != 0]]
        best = np.full(n, -1, np.int64)
        best[cluster_id[firsts]] = firsts
        rep = best[cluster_id]
    else:
        raise ValueError(f"merge_clusters: unknown strategy {strategy!r}")
    keep = rep == idx
    return keep, np.where(keep, -1, rep)


def find_duplicates(data: Data, config: FuzzyConfig) -> FuzzyResult:
    """Runs the whole matching core on one table or batch."""
    n = data.num_rows
    strings = {f: normalised_strings(data.column(f)) for f in config.string_fields()}
    exact_fields = list(config.exact_fields or [c.field for c in config.comparisons])
    exact_rep = exact_duplicates(strings, exact_fields) if n else np.zeros(0, np.int64)
    rows = np.flatnonzero(exact_rep == np.arange(n))
    sub = {f: v[rows] for f, v in strings.items()}
    spec = config.embedding
    texts = emb.record_texts(sub, spec.fields) if spec else None
    embedded = np.zeros(0, np.int64)
    left, right = candidate_pairs(sub, config) if len(rows) > 1 else blk.union_pairs([], 1)
    if spec and spec.neighbours and len(rows) > 1:
        near = emb.neighbour_pairs(texts, spec)
        left, right = blk.union_pairs([(left, right), near], len(rows))
        embedded = np.flatnonzero(texts != "")
    sims = compare_pairs(data, sub, rows, left, right, config.comparisons, config.workers)
    score, model = classify(sims, config)
    if spec:
        score, voted = emb.borderline_vote(score, left, right, texts, spec)
        embedded = np.union1d(embedded, voted)
    matched = score >= config.threshold
    dup = np.flatnonzero(exact_rep != np.arange(n))
    edges_l = np.concatenate([rows[left[matched]], dup])
    edges_r = np.concatenate([rows[right[matched]], exact_rep[dup]])
    cluster_id = cluster_pairs(n, edges_l, edges_r)
    quality = numeric_values(data.column(config.score_column)) if config.score_column else None
    keep, duplicate_of = merge_clusters(cluster_id, config.strategy, quality)
    stats = {"rows": n, "exact_duplicates": len(dup), "candidates": len(left), "matched_pairs": int(matched.sum()),
             "clusters": len(np.unique(cluster_id)), "kept": int(keep.sum()), "embedded_records": len(embedded)}
    return FuzzyResult(cluster_id, keep, duplicate_of, rows[left], rows[right], score, matched, model, stats)
