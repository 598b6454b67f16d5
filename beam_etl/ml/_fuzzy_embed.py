"""Embedding stages of fuzzy matching: nearest-neighbour candidates and the borderline-pair vote.

MiniLM encodes a few hundred short strings per second on two cores, against tens of thousands
of field comparisons per second, so embeddings are used only where they pay:

* ``neighbours > 0``: every record's text is embedded and each record's ``neighbours`` most
  similar records (cosine >= ``min_cosine``) become extra candidate pairs. This finds matches
  that share no blocking key (reordered words, abbreviations) at the cost of embedding 100 %.
* ``borderline``: after classification, only pairs whose score lies in ``[low, high)`` get an
  embedding vote: ``score = (1 - weight) * score + weight * sigmoid((cosine - cosine_threshold) / 0.02)``.
  With the default weight 0.5 and threshold 0.5 the embedding decides the pairs the field
  comparators could not, and only the records in those pairs are embedded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.ml._fuzzy_scoring import Encoder
from beam_etl.ml.embeddings import SentenceEncoder, top_k_neighbours

SIGMOID_WIDTH = 0.02


@dataclass(frozen=True)
class EmbeddingMatch:
    """How sentence embeddings help the field comparators (see the module docstring)."""

    fields: tuple[str, ...] | str
    neighbours: int = 0
    min_cosine: float = 0.85
    borderline: tuple[float, float] | None = (0.1, 0.9)
    weight: float = 0.5
    cosine_threshold: float = 0.9
    encoder: Encoder = field(default_factory=SentenceEncoder, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            object.__setattr__(self, "fields", (self.fields,))
        if not self.fields:
            raise ValueError("EmbeddingMatch.fields: give at least one text field")
        if self.neighbours < 0:
            raise ValueError(f"EmbeddingMatch.neighbours: {self.neighbours} must be >= 0")
        if self.borderline is not None:
            low, high = self.borderline
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"EmbeddingMatch.borderline: {self.borderline} must be 0 <= low < high <= 1")
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"EmbeddingMatch.weight: {self.weight} must be in (0, 1]")
        if not -1.0 <= self.cosine_threshold <= 1.0 or not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError("EmbeddingMatch.cosine_threshold / min_cosine must be in [-1, 1]")
        if self.neighbours == 0 and self.borderline is None:
            raise ValueError("EmbeddingMatch: set neighbours > 0 and/or borderline, else embeddings do nothing")


def record_texts(strings: dict[str, np.ndarray], fields: tuple[str, ...]) -> np.ndarray:
    """One text per row: the normalised ``fields`` joined by spaces (empty values skipped), in Arrow."""
    cols = [pc.if_else(pc.equal(arr := pa.array(strings[f], pa.string()), ""), None, arr) for f in fields]
    joined = pc.binary_join_element_wise(*cols, " ", null_handling="skip")
    return np.asarray(joined.fill_null("").to_numpy(zero_copy_only=False), dtype=object)


def encode_rows(texts: np.ndarray, rows: np.ndarray, encoder: Encoder) -> np.ndarray:
    """Unit vectors for ``texts[rows]`` (each distinct text encoded once)."""
    uniq, inv = np.unique(texts[rows].astype(str), return_inverse=True)
    vecs = np.asarray(encoder([str(t) for t in uniq]), dtype=np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs[inv.reshape(-1)]


def neighbour_pairs(texts: np.ndarray, spec: EmbeddingMatch) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs from each row's nearest neighbours in embedding space (rows with text only)."""
    rows = np.flatnonzero(texts != "")
    if len(rows) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left, right = top_k_neighbours(encode_rows(texts, rows, spec.encoder), spec.neighbours, spec.min_cosine)
    return rows[left], rows[right]


def borderline_vote(score: np.ndarray, left: np.ndarray, right: np.ndarray, texts: np.ndarray,
                    spec: EmbeddingMatch) -> tuple[np.ndarray, np.ndarray]:
    """(new scores, rows embedded): borderline pairs get the embedding vote; others are unchanged."""
    if spec.borderline is None or len(score) == 0:
        return score, np.zeros(0, np.int64)
    low, high = spec.borderline
    pick = np.flatnonzero((score >= low) & (score < high)
                          & (texts[left] != "") & (texts[right] != ""))
    if len(pick) == 0:
        return score, np.zeros(0, np.int64)
    rows = np.unique(np.concatenate([left[pick], right[pick]]))
    vecs = encode_rows(texts, rows, spec.encoder)
    pos = np.searchsorted(rows, left[pick]), np.searchsorted(rows, right[pick])
    cosine = np.einsum("ij,ij->i", vecs[pos[0]], vecs[pos[1]])
    vote = 1.0 / (1.0 + np.exp(-(cosine - spec.cosine_threshold) / SIGMOID_WIDTH))
    out = score.copy()
    out[pick] = (1.0 - spec.weight) * score[pick] + spec.weight * vote
    return out, rows
