"""PCA whitening of embeddings before clustering: label-free, fitted on the vectors themselves.

Self-supervised embeddings are anisotropic: a few directions (channel, corpus, loudness)
carry much of the variance and dominate Euclidean and cosine distances, so clusters follow
recording conditions as much as speakers. Centring and scaling every principal direction to
unit variance gives each the same say. In ``benchmarks/bench_real_speech_ssl.py --pool
shared`` (2,451 utterances, AHC to 450, seed 0) it lifts the NMI of the same DINO embeddings
from 0.695 to 0.748, and the final EER goes from 10.58% to 7.24%.

Directions whose variance is below ``rank_tol`` times the largest are dropped rather than
blown up to unit variance: with fewer vectors than dimensions they hold only rounding noise.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from sv_kedro.clustering.kmeans import ClusteringInputError

_CHUNK = 65_536


def whiten_vectors(vectors: np.ndarray, rank_tol: float = 1e-6) -> np.ndarray:
    """Centred, PCA-whitened ``[n, r]`` float32 copy of ``vectors`` ``[n, d]`` (``r <= d``).

    The covariance is accumulated over row chunks, so a million 256-d rows need no
    float64 copy. Raises ``ClusteringInputError`` for fewer than two rows or all-equal rows.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ClusteringInputError(f"whitening needs an [n >= 2, d] array, got shape {x.shape}")
    n, d = x.shape
    mean = np.zeros(d, dtype=np.float64)
    for start in range(0, n, _CHUNK):
        mean += x[start : start + _CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n
    scatter = np.zeros((d, d), dtype=np.float64)
    centre = mean.astype(np.float32)
    for start in range(0, n, _CHUNK):
        # float32 products per chunk (10x faster than float64), summed in float64.
        block = np.asarray(x[start : start + _CHUNK], dtype=np.float32) - centre
        scatter += block.T @ block
    # One thread: a d x d eigendecomposition is milliseconds, but BLAS threads waiting on a
    # busy machine made it take a second.
    with threadpool_limits(limits=1):
        variances, directions = np.linalg.eigh(scatter / n)
    keep = variances > rank_tol * max(float(variances.max()), 0.0)
    if not keep.any():
        raise ClusteringInputError("cannot whiten: every vector is the same")
    # Largest variance first, as PCA lists them.
    order = np.flatnonzero(keep)[::-1]
    projection = (directions[:, order] / np.sqrt(variances[order])).astype(np.float32)
    shift = centre @ projection
    out = np.empty((n, order.size), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        block = np.asarray(x[start : start + _CHUNK], dtype=np.float32)
        np.subtract(block @ projection, shift, out=out[start : start + _CHUNK])
    return out
