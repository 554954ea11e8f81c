"""The two nearest binary descriptors by Hamming distance, compiled: the verifier's matching step.

ORB descriptors are 256 bits, four ``uint64`` words. One compiled pass keeps the two smallest
distances per query row with the CPU's popcount instruction (LLVM ``ctpop``). Measured on this
machine under load: 1,000 × 1,000 descriptors in 14 ms against 35 ms for OpenCV's
``BFMatcher.knnMatch`` (its Python-object results and generic kernel), which made matching 95 % of
a verification.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _ctpop(typingctx, value):  # noqa: ARG001 - numba's intrinsic signature
    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def _two_nearest(query: np.ndarray, train: np.ndarray, best: np.ndarray, dist: np.ndarray) -> None:
    for i in range(query.shape[0]):
        q0, q1, q2, q3 = query[i, 0], query[i, 1], query[i, 2], query[i, 3]
        d1, d2, j1 = 1 << 20, 1 << 20, -1
        for j in range(train.shape[0]):
            d = (
                _ctpop(q0 ^ train[j, 0])
                + _ctpop(q1 ^ train[j, 1])
                + _ctpop(q2 ^ train[j, 2])
                + _ctpop(q3 ^ train[j, 3])
            )
            if d < d2:
                if d < d1:
                    d2, d1, j1 = d1, d, j
                else:
                    d2 = d
        best[i] = j1
        dist[i, 0] = d1
        dist[i, 1] = d2


def two_nearest(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For uint8 (n, 32) and (m, 32) descriptors: the index of each query row's nearest train row, and
    its (n, 2) distances to the nearest and second nearest (2**20 where there is none)."""
    q = np.ascontiguousarray(query).view(np.uint64)
    t = np.ascontiguousarray(train).view(np.uint64)
    best = np.full(len(q), -1, np.int64)
    dist = np.zeros((len(q), 2), np.int64)
    _two_nearest(q, t, best, dist)
    return best, dist
