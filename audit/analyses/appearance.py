"""Pairing by appearance: the last resort for two copies of one picture whose digests differ.

A picture saved again with loss (a JPEG re-encoded when a dataset was rebuilt) keeps what it
shows but not its pixels, so its digest (``image_sha256``) changes. Each run stores a thumbnail
of every image; two samples pair by appearance when their thumbnails, reduced to 16 x 16 grey
levels with brightness and contrast taken out, are each other's nearest neighbour, close in
absolute terms, and much closer than either's second nearest. Different faces (alike in layout,
never in detail) fail those tests; the report counts these pairs apart from the exact ones.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from PIL import Image

SIDE = 16
#: Largest distance between the unit-length signatures of one picture's two copies (0: equal,
#: 2: opposite); lossy copies of a real photograph measure well under 0.1.
MAX_DISTANCE = 0.35
#: The nearest must be at most this share of the second nearest (both ways).
RATIO = 0.5
_CHUNK = 1024


def signature(jpeg: bytes) -> np.ndarray:
    """A thumbnail as a unit vector of 16 x 16 grey levels, mean removed."""
    with Image.open(io.BytesIO(jpeg)) as image:
        grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    values = np.asarray(grey, dtype=np.float64).ravel()
    values -= values.mean()
    norm = np.linalg.norm(values)
    return values / norm if norm > 0 else values


def match_by_appearance(a: Mapping[str, bytes], b: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """``(id in a, id in b)`` pairs of thumbnails that show the same picture (see the module)."""
    if not a or not b:
        return []
    ids_a, ids_b = list(a), list(b)
    sig_a = np.stack([signature(a[i]) for i in ids_a])
    sig_b = np.stack([signature(b[i]) for i in ids_b])
    best_a, near_a, second_a = _nearest(sig_a, sig_b)
    best_b, _, second_b = _nearest(sig_b, sig_a)
    pairs = []
    for i, j in enumerate(best_a):
        distance = near_a[i]
        mutual = best_b[j] == i
        distinct = distance <= RATIO * second_a[i] and distance <= RATIO * second_b[j]
        if mutual and distance <= MAX_DISTANCE and distinct:
            pairs.append((ids_a[i], ids_b[int(j)]))
    return pairs


def _nearest(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``x``: its nearest row of ``y``, that distance, and the second nearest
    distance (``inf`` when ``y`` has one row). Chunked: runs hold tens of thousands of images."""
    best = np.empty(len(x), dtype=int)
    first = np.empty(len(x))
    second = np.full(len(x), np.inf)
    for start in range(0, len(x), _CHUNK):
        # Unit vectors: squared distance = 2 - 2 cos.
        cos = x[start : start + _CHUNK] @ y.T
        distance = np.sqrt(np.clip(2 - 2 * cos, 0, None))
        if y.shape[0] > 1:
            two = np.argpartition(distance, 1, axis=1)[:, :2]
        else:
            two = np.zeros((len(distance), 1), dtype=int)
        rows = np.arange(len(two))
        # The two smallest, nearest first.
        order = np.take_along_axis(two, np.argsort(distance[rows[:, None], two], axis=1), axis=1)
        best[start : start + len(order)] = order[:, 0]
        first[start : start + len(order)] = distance[rows, order[:, 0]]
        if y.shape[0] > 1:
            second[start : start + len(order)] = distance[rows, order[:, 1]]
    return best, first, second
