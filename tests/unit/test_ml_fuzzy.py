"""beam_etl.ml.fuzzy on small synthetic data: blocking, comparators, EM, clustering, merge strategies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from beam_etl.ml import _fuzzy_blocking as blk
from beam_etl.ml import fuzzy
from beam_etl.ml._fuzzy_scoring import fit_em, to_levels
from beam_etl.ml.fuzzy import BlockKey, Comparison, FuzzyConfig, find_duplicates, merge_clusters, soundex

PEOPLE = [  # (entity, first, last, dob, city, quality)
    (0, "Jonathan", "Smith", "1980-01-02", "Paris", 3.0),
    (0, "Jonathon", "Smith", "1980-01-02", "Paris", 5.0),
    (0, "Jonathan", "Smyth", "1980-01-02", "paris", 1.0),
    (1, "Maria", "Garcia", "1975-06-30", "Madrid", 2.0),
    (1, "Marla", "Garcia", "1975-06-30", "Madrid", 9.0),
    (2, "Wei", "Zhang", "1990-11-11", "Beijing", 1.0),
    (3, "Olga", "Petrova", "1968-03-15", "Moscow", 4.0),
    (3, " OLGA ", "petrova", "1968-03-15", "Moscow ", 2.0),  # exact after normalisation
    (4, "Kwame", "Mensah", "1985-08-21", "Accra", 1.0),
    (5, "Anna", "Schmidt", "1999-12-24", "Berlin", 1.0),
    (6, "Jonathan", "Smithers", "1955-04-04", "Leeds", 1.0),
    (7, "Sofia", "Rossi", "1993-02-14", "Rome", 1.0),
]


def people() -> tuple[pa.Table, np.ndarray]:
    cols = list(zip(*PEOPLE, strict=True))
    table = pa.table({"first": list(cols[1]), "last": list(cols[2]), "dob": list(cols[3]), "city": list(cols[4]),
                      "quality": pa.array(cols[5], pa.float64())})
    return table, np.array(cols[0])


def config(**kw) -> FuzzyConfig:
    base = dict(
        comparisons=(Comparison("first"), Comparison("last"), Comparison("dob", "date", scale=365.0),
                     Comparison("city", "exact")),
        blocking=(BlockKey("last", "soundex"), BlockKey("dob")),
        sorted_keys=(BlockKey("first"),), window=3, classifier="threshold", threshold=0.85,
        exact_fields=("first", "last", "dob", "city"))
    base.update(kw)
    return FuzzyConfig(**base)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings group the rows identically."""
    return all((a[i] == a).tolist() == (b[i] == b).tolist() for i in range(len(a)))


def test_known_clusters_found() -> None:
    table, entity = people()
    result = find_duplicates(table, config())
    assert same_partition(result.cluster_id, entity)
    assert result.stats["exact_duplicates"] == 1
    assert result.cluster_id[2] == 0 and result.cluster_id[7] == 6  # id = smallest row of the cluster


def test_em_classifier_finds_clusters_on_larger_synthetic_data() -> None:
    rng = np.random.default_rng(3)
    firsts = np.array(["anna", "ben", "carla", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jorge"])
    lasts = np.array(["novak", "okafor", "park", "quinn", "ramos", "silva", "tanaka", "ulrich", "vance", "weber"])
    n_ent = 300
    base = {"first": firsts[rng.integers(0, 10, n_ent)], "last": lasts[rng.integers(0, 10, n_ent)],
            "zip": np.char.zfill(rng.integers(0, 99999, n_ent).astype(str), 5),
            "dob": [f"19{rng.integers(40, 99)}-{rng.integers(1, 12):02d}-{rng.integers(1, 28):02d}"
                    for _ in range(n_ent)]}
    entity = np.r_[np.arange(n_ent), np.arange(0, n_ent, 3)]
    rows = {k: np.asarray(v, dtype=object)[entity].copy() for k, v in base.items()}
    for i in range(n_ent, len(entity)):  # one typo in a duplicate's last name, sometimes a zip digit
        s = rows["last"][i]
        rows["last"][i] = s[:2] + s[3:] + "x"
        if i % 2:
            rows["zip"][i] = rows["zip"][i][:4] + "9"
    table = pa.table({k: list(v) for k, v in rows.items()})
    cfg = FuzzyConfig(comparisons=(Comparison("first"), Comparison("last"), Comparison("zip", "levenshtein"),
                                   Comparison("dob", "levenshtein")),
                      blocking=(BlockKey("dob"), BlockKey("zip", "prefix", 3)), classifier="em")
    result = find_duplicates(table, cfg)
    assert same_partition(result.cluster_id, entity)
    assert result.model is not None and result.model.converged


@pytest.mark.parametrize("strategy", ["keep_first", "keep_last", "keep_best", "tag_only"])
def test_no_record_lost(strategy: str) -> None:
    table, _ = people()
    result = find_duplicates(table, config(strategy=strategy, score_column="quality"))
    kept = result.keep
    for i in range(table.num_rows):
        if kept[i]:
            assert result.duplicate_of[i] == -1
        else:
            j = result.duplicate_of[i]
            assert kept[j] and result.cluster_id[j] == result.cluster_id[i]
    assert kept.sum() == (table.num_rows if strategy == "tag_only" else len(np.unique(result.cluster_id)))
    out = result.apply(table)
    assert out.num_rows == kept.sum()
    sizes = np.bincount(result.cluster_id)[result.cluster_id[kept]]
    assert out.column("duplicate_count").to_pylist() == (sizes - 1).tolist()
    if strategy != "tag_only":
        assert sum(out.column("duplicate_count").to_pylist()) == table.num_rows - kept.sum()


def test_merge_strategies() -> None:
    cluster = np.array([0, 0, 0, 3, 3, 5])
    score = np.array([1.0, 7.0, np.nan, 2.0, 2.0, 0.0])
    keep, dup = merge_clusters(cluster, "keep_first")
    assert keep.tolist() == [True, False, False, True, False, True] and dup.tolist() == [-1, 0, 0, -1, 3, -1]
    keep, dup = merge_clusters(cluster, "keep_last")
    assert keep.tolist() == [False, False, True, False, True, True] and dup.tolist() == [2, 2, -1, 4, -1, -1]
    keep, dup = merge_clusters(cluster, "keep_best", score)
    assert keep.tolist() == [False, True, False, True, False, True] and dup.tolist() == [1, -1, 1, -1, 3, -1]
    keep, dup = merge_clusters(cluster, "tag_only")
    assert keep.all() and (dup == -1).all()
    with pytest.raises(ValueError, match="score"):
        merge_clusters(cluster, "keep_best")


def test_keep_best_uses_score_column() -> None:
    table, _ = people()
    result = find_duplicates(table, config(strategy="keep_best", score_column="quality"))
    assert result.keep[1] and not result.keep[0] and result.duplicate_of[2] == 1  # quality 5 wins in entity 0
    assert result.keep[4] and result.duplicate_of[3] == 4


def test_blocking_never_compares_across_blocks() -> None:
    rng = np.random.default_rng(0)
    key = np.array(["a", "b", "c", ""], dtype=object)[rng.integers(0, 4, 200)]
    left, right = blk.block_pairs(key)
    assert len(left) and (key[left] == key[right]).all() and (key[left] != "").all() and (left < right).all()
    sizes = [int((key == k).sum()) for k in "abc"]
    assert len(left) == sum(s * (s - 1) // 2 for s in sizes)
    assert len(blk.block_pairs(key, max_block_size=10)[0]) == 0


def test_pipeline_candidates_respect_blocks() -> None:
    table, _ = people()
    cfg = config(blocking=(BlockKey("city"),), sorted_keys=())
    result = find_duplicates(table, cfg)
    city = fuzzy.normalised_strings(table.column("city"))
    assert len(result.left) and (city[result.left] == city[result.right]).all()


def test_sorted_neighbourhood_window() -> None:
    key = np.array(["d", "a", "c", "b", "", "e"], dtype=object)
    left, right = blk.neighbourhood_pairs(key, window=2)
    got = {(int(a), int(b)) for a, b in zip(left, right, strict=True)}
    assert got == {(1, 3), (2, 3), (0, 2), (0, 5)}  # a-b, b-c, c-d, d-e


def test_union_dedups_pairs() -> None:
    a = (np.array([0, 1]), np.array([1, 2]))
    b = (np.array([0, 2]), np.array([1, 3]))
    left, right = blk.union_pairs([a, b], 4)
    assert list(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (1, 2), (2, 3)]


def test_key_transforms() -> None:
    assert soundex("Robert") == soundex("Rupert") == "r163"
    assert soundex("Tymczak") == "t522" and soundex("Ashcraft") == "a261" and soundex("") == ""
    vals = np.array(["smith", "smyth", "", "jones"], dtype=object)
    assert blk.transform_values(vals, "prefix", 2).tolist() == ["sm", "sm", "", "jo"]
    key = blk.build_key([vals, np.array(["x", "y", "z", ""], dtype=object)])
    assert key.tolist() == ["smith\x1fx", "smyth\x1fy", "", ""]


def test_comparators_and_missing() -> None:
    table = pa.table({"name": ["martha", "marhta", None], "n": [10.0, 12.0, None],
                      "d": ["2020-01-01", "20200111", "bad"]})
    strings = {"name": fuzzy.normalised_strings(table.column("name"))}
    left, right = np.array([0, 0]), np.array([1, 2])
    comps = (Comparison("name"), Comparison("name", "levenshtein"), Comparison("name", "exact"),
             Comparison("n", "numeric", scale=4.0), Comparison("d", "date", scale=20.0))
    sims = fuzzy.compare_pairs(table, strings, np.arange(3), left, right, comps)
    assert sims[0, 0] == pytest.approx(0.9611, abs=1e-3)
    assert sims[0, 1] == pytest.approx(4 / 6) and sims[0, 2] == 0.0
    assert sims[0, 3] == pytest.approx(0.5) and sims[0, 4] == pytest.approx(0.5)
    assert np.isnan(sims[1]).all()
    assert to_levels(sims[:, 0], (0.8, 0.9, 1.0)).tolist() == [2, -1]


def test_embedding_hook() -> None:
    vocab = {"nyc": [1.0, 0.0], "new york": [0.99, 0.1], "boston": [0.0, 1.0]}
    comp = Comparison("city", "embedding", encoder=lambda texts: np.array([vocab[t] for t in texts]))
    table = pa.table({"city": ["NYC", "New York", "Boston"]})
    strings = {"city": fuzzy.normalised_strings(table.column("city"))}
    sims = fuzzy.compare_pairs(table, strings, np.arange(3), np.array([0, 0]), np.array([1, 2]), (comp,))
    assert sims[0, 0] > 0.99 and sims[1, 0] == 0.0


def test_em_weights_favour_agreement() -> None:
    rng = np.random.default_rng(1)
    n_match, n_non = 300, 3000
    match = np.column_stack([rng.choice(3, n_match, p=[0.05, 0.15, 0.8]) for _ in range(4)])
    non = np.column_stack([rng.choice(3, n_non, p=[0.85, 0.12, 0.03]) for _ in range(4)])
    levels = np.vstack([match, non]).astype(np.int8)
    levels[rng.random(levels.shape) < 0.05] = -1  # some missing values
    model = fit_em(levels, [3, 3, 3, 3])
    assert model.converged
    assert model.prior == pytest.approx(n_match / (n_match + n_non), abs=0.03)
    for w in model.weights():
        assert w[2] > 0 > w[0] and w[2] > w[1]
    prob = model.probability(levels)
    assert prob[:n_match].mean() > 0.9 and prob[n_match:].mean() < 0.1


def test_empty_and_single_row() -> None:
    for n in (0, 1):
        table = pa.table({"first": pa.array(["a"] * n, pa.string()), "last": pa.array(["b"] * n, pa.string()),
                          "dob": pa.array(["2000-01-01"] * n, pa.string()),
                          "city": pa.array(["x"] * n, pa.string())})
        result = find_duplicates(table, config(classifier="em"))
        assert result.keep.tolist() == [True] * n and len(result.left) == 0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="blocking"):
        FuzzyConfig(comparisons=(Comparison("a"),))
    with pytest.raises(ValueError, match="method"):
        Comparison("a", "cosine")
    with pytest.raises(ValueError, match="transform"):
        BlockKey("a", "metaphone")
    with pytest.raises(ValueError, match="score_column"):
        config(strategy="keep_best")


def test_date_similarity_forgives_a_day_month_transposition():
    from beam_etl.ml._fuzzy_scoring import date_similarity

    def days(text: str) -> float:
        return float(np.datetime64(text, "D").astype(np.int64))

    a = np.array([days("2024-04-05"), days("2024-03-03"), days("2024-01-30"), days("2024-04-05"), np.nan])
    b = np.array([days("2024-05-04"), days("2024-03-03"), days("2024-01-31"), days("2024-06-04"), 1.0])
    sim = date_similarity(a, b, scale=1.0)
    assert sim[:4].tolist() == [0.9, 1.0, 0.0, 0.0] and np.isnan(sim[4])
