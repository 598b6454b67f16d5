"""A random forest stored as plain numpy arrays (``.npz``, no pickle) and evaluated with numpy.

Trained with scikit-learn by ``scripts/train_semantic.py``; shipping arrays instead of a joblib
pickle keeps the file small, safe to load and independent of the scikit-learn version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FORMAT = 1


@dataclass(frozen=True)
class ForestModel:
    """Flattened trees: node arrays with global child indices (-1 at leaves) and leaf class fractions."""

    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int
    meta: dict[str, Any]

    @classmethod
    def from_sklearn(cls, forest: Any, feature_names: tuple[str, ...], meta: dict[str, Any]) -> ForestModel:
        """Flatten a fitted ``RandomForestClassifier`` (or any ensemble of sklearn decision trees)."""
        roots, feats, thrs, lefts, rights, values = [], [], [], [], [], []
        offset, depth = 0, 0
        for est in forest.estimators_:
            t = est.tree_
            roots.append(offset)
            leaf = t.children_left < 0
            feats.append(np.where(leaf, -1, t.feature).astype(np.int16))
            thrs.append(np.where(leaf, 0.0, t.threshold))
            lefts.append(np.where(leaf, -1, t.children_left + offset).astype(np.int32))
            rights.append(np.where(leaf, -1, t.children_right + offset).astype(np.int32))
            v = t.value[:, 0, :].astype(np.float64)
            v /= np.maximum(v.sum(axis=1, keepdims=True), 1e-12)
            values.append(np.where(leaf[:, None], v, 0.0).astype(np.float32))
            offset += t.node_count
            depth = max(depth, int(t.max_depth))
        return cls(tuple(str(c) for c in forest.classes_), tuple(feature_names), np.asarray(roots, dtype=np.int32),
                   np.concatenate(feats), np.concatenate(thrs), np.concatenate(lefts), np.concatenate(rights),
                   np.concatenate(values), depth, dict(meta))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (mean of the trees' leaf fractions) for one vector or a matrix of rows."""
        rows = np.atleast_2d(np.asarray(x, dtype=np.float32))
        out = np.empty((rows.shape[0], len(self.classes)), dtype=np.float64)
        for i, row in enumerate(rows):
            node = self.roots.copy()
            for _ in range(self.depth + 1):
                f = self.feature[node]
                inner = f >= 0
                if not inner.any():
                    break
                go_left = row[np.where(inner, f, 0)] <= self.threshold[node]
                node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            out[i] = self.value[node].mean(axis=0)
        return out if np.ndim(x) == 2 else out[0]

    def save(self, path: Path) -> None:
        """Write a compressed ``.npz`` (strings as unicode arrays, metadata as JSON; no pickled objects)."""
        np.savez_compressed(
            path, classes=np.array(self.classes), feature_names=np.array(self.feature_names), roots=self.roots,
            feature=self.feature, threshold=self.threshold, left=self.left, right=self.right,
            value=self.value.astype(np.float16), depth=np.int32(self.depth),
            meta=np.array(json.dumps({**self.meta, "format": MODEL_FORMAT}, sort_keys=True)))

    @classmethod
    def load(cls, path: Path) -> ForestModel:
        """Read a model written by ``save`` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != MODEL_FORMAT:
                raise ValueError(f"{path}: model format {meta.get('format')!r}, expected {MODEL_FORMAT}; "
                                 "retrain with `python scripts/train_semantic.py`")
            return cls(tuple(str(c) for c in z["classes"]), tuple(str(c) for c in z["feature_names"]),
                       z["roots"], z["feature"], z["threshold"], z["left"], z["right"],
                       z["value"].astype(np.float32), int(z["depth"]), meta)
