"""MiniLM embeddings in fuzzy matching: offline load once per process, caching, neighbours, borderline vote."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from beam_etl.ml import embeddings
from beam_etl.ml._fuzzy_embed import borderline_vote, record_texts
from beam_etl.ml.embeddings import SentenceEncoder, top_k_neighbours
from beam_etl.ml.fuzzy import BlockKey, Comparison, EmbeddingMatch, FuzzyConfig, find_duplicates


class CountingEncoder:
    """Deterministic stand-in for unit tests of the wiring: a bag-of-letters vector, counts calls."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        out = np.zeros((len(texts), 26), np.float32)
        for i, t in enumerate(texts):
            for ch in t:
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out


def test_top_k_neighbours_finds_closest_pairs_once():
    vecs = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.1, 0.99]], np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    left, right = top_k_neighbours(vecs, k=1, min_cosine=0.9)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (2, 3)]
    left, _ = top_k_neighbours(vecs, k=1, min_cosine=0.999)
    assert len(left) == 0


def test_borderline_vote_embeds_only_rows_of_borderline_pairs():
    texts = np.array(["ann smith", "anne smith", "bob jones", "robert jones", "zed"], dtype=object)
    score = np.array([0.5, 0.99, 0.02])
    left, right = np.array([0, 2, 0]), np.array([1, 3, 4])
    enc = CountingEncoder()
    spec = EmbeddingMatch("name", encoder=enc, cosine_threshold=0.9)
    new, rows = borderline_vote(score, left, right, texts, spec)
    assert rows.tolist() == [0, 1]
    assert sorted(enc.seen) == ["ann smith", "anne smith"]
    assert new[0] > 0.5 and new[1] == 0.99 and new[2] == 0.02


def test_record_texts_join_non_empty_fields():
    strings = {"a": np.array(["x", "", "z"], dtype=object), "b": np.array(["1", "2", ""], dtype=object)}
    assert record_texts(strings, ("a", "b")).tolist() == ["x 1", "2", "z"]


def test_embedding_match_rejects_useless_or_bad_settings():
    with pytest.raises(ValueError, match="do nothing"):
        EmbeddingMatch("name", borderline=None, encoder=CountingEncoder())
    with pytest.raises(ValueError, match="borderline"):
        EmbeddingMatch("name", borderline=(0.9, 0.1), encoder=CountingEncoder())


def test_encoder_pickles_without_model_or_cache():
    enc = SentenceEncoder(batch_size=8)
    enc._cache["x"] = np.ones(3, np.float32)
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.batch_size == 8 and len(clone._cache) == 0


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 from its PyPI package, loaded once for this module."""
    embeddings.load_model()
    return embeddings


def test_minilm_loads_offline_once_per_process_and_caches_strings(minilm):
    before = minilm.load_count()
    first, second = SentenceEncoder(), SentenceEncoder()  # e.g. two DoFn instances / two batches
    a = first(["ann smith 12 high street", "anne smith 12 high st"])
    b = second(["ann smith 12 high street"])
    assert minilm.load_count() == before  # the fixture's load is reused, never repeated
    assert a.shape == (2, 384) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    assert np.allclose(a[0], b[0], atol=1e-5)
    first(["ann smith 12 high street"])
    assert first.encoded == 2  # the repeat came from the cache


def test_minilm_neighbours_find_a_match_that_shares_no_blocking_key(minilm):
    names = ["robert smith", "smith robert", "alice wong", "maria garcia", "john o'neil", "wei zhang"]
    table = pa.table({"name": names, "city": ["leeds", "leeds", "york", "bath", "hull", "ely"]})
    base = dict(comparisons=(Comparison("name", "jaro_winkler"), Comparison("city", "exact")),
                blocking=(BlockKey("name", "prefix", 3),), classifier="threshold", threshold=0.7)
    without = find_duplicates(table, FuzzyConfig(**base))
    assert without.stats["kept"] == 6  # "rob" vs "smi": never compared
    spec = EmbeddingMatch("name", neighbours=1, min_cosine=0.8, borderline=None, encoder=SentenceEncoder())
    found = find_duplicates(table, FuzzyConfig(**base, embedding=spec))
    assert found.cluster_id[1] == found.cluster_id[0] == 0
    assert found.stats["kept"] == 5 and found.stats["embedded_records"] == 6
