"""LDA and two-covariance PLDA back-ends, trained on training-set embeddings.

The two-covariance model (Sizov et al., 2014) says an embedding is ``x = y + e`` with the
speaker variable ``y ~ N(mu, B)`` and the session noise ``e ~ N(0, W)``. For a trial, the
log-likelihood ratio of "same speaker" against "different speakers" is a quadratic form

    llr(x1, x2) = ½ x1ᵀ Q x1 + ½ x2ᵀ Q x2 + x1ᵀ P x2 + const

(centred x), with T = B + W, A = (T − B T⁻¹ B)⁻¹, Q = T⁻¹ − A and P = T⁻¹ B A.
The quadratic terms are computed once per utterance, the cross term once per trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import pandas as pd

from sv_kedro.scoring.cosine import normalise_embeddings, paired_dot, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingTable


def _class_scatter(
    vectors: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global mean, between-class and within-class covariance (``[dim, dim]`` each)."""
    x = _checked_training_set(vectors, labels)
    codes, _ = pd.factorize(pd.Series(labels))
    n_classes = codes.max() + 1
    mu = x.mean(axis=0)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, codes, x)
    class_means = sums / counts[:, None]
    centred_means = class_means - mu
    between = (centred_means * counts[:, None]).T @ centred_means / counts.sum()
    within_dev = x - class_means[codes]
    within = within_dev.T @ within_dev / counts.sum()
    if not np.trace(within) > 0:
        # Nothing varies within a speaker: LDA's Cholesky fails on a bare LinAlgError and
        # PLDA inverts a zero matrix into scores of 1e8.
        raise ValueError(
            f"LDA/PLDA: none of the {n_classes} speakers has two different embeddings (one "
            "utterance each, or copies of one vector), so there is no within-speaker "
            "variation to train on; give several utterances per speaker"
        )
    return mu, between, within


def _checked_training_set(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``vectors`` as float64 ``[n, dim]``, after checking them against ``labels``."""
    x = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels, dtype=object).ravel()
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"LDA/PLDA: {len(labels)} speaker labels for embeddings {x.shape}")
    unlabelled = np.flatnonzero(pd.isna(labels))
    if unlabelled.size:
        raise ValueError(
            f"LDA/PLDA: {unlabelled.size} training embedding(s) have no speaker label, at "
            f"rows {unlabelled[:5].tolist()}"
        )
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(
            f"LDA/PLDA: {bad.size} training embedding(s) hold NaN or inf, at rows "
            f"{bad[:5].tolist()}"
        )
    if len(pd.unique(labels)) < 2:
        raise ValueError("LDA/PLDA need embeddings of at least two speakers")
    return x


@dataclass
class LDA:
    """Linear discriminant analysis projection to ``dim`` dimensions."""

    mean: np.ndarray
    projection: np.ndarray  # [in_dim, out_dim]

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, dim: int) -> LDA:
        """Fit on length-normalised ``vectors [n, d]`` with speaker ``labels [n]``."""
        # dim -1 would keep all but one direction and 0 none, both without a word.
        if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
            raise ValueError(f"LDA: dim must be an integer >= 1, got {dim!r}")
        mu, between, within = _class_scatter(vectors, labels)
        within = within + 1e-6 * np.trace(within) / len(within) * np.eye(len(within))
        # Generalised eigenproblem B v = λ W v through a Cholesky whitening of W.
        chol = np.linalg.cholesky(within)
        inv_chol = np.linalg.inv(chol)
        eigvals, eigvecs = np.linalg.eigh(inv_chol @ between @ inv_chol.T)
        order = np.argsort(eigvals)[::-1][:dim]
        projection = inv_chol.T @ eigvecs[:, order]
        return cls(mean=mu, projection=projection)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """``[n, in_dim]`` -> ``[n, out_dim]`` float32."""
        return ((vectors - self.mean) @ self.projection).astype(np.float32)


def _check_within_rank(within: np.ndarray) -> None:
    """Refuse a within-speaker covariance without spread in some direction: PLDA inverts
    it, and the scores (``1e8`` and more) would be meaningless."""
    eigvals = np.linalg.eigvalsh(within)
    rank = int((eigvals > 1e-10 * eigvals[-1]).sum())
    if rank < len(within):
        raise ValueError(
            f"PLDA: the within-speaker covariance has rank {rank} of {len(within)} (too few "
            "utterances per speaker beyond the first, or copies of one vector, for the "
            "embedding dimension); give more utterances per speaker, or project to fewer "
            "dimensions with LDA (evaluation.scoring.lda_dim)"
        )


@dataclass
class TwoCovariancePLDA:
    """Two-covariance PLDA with closed-form trial scoring."""

    mean: np.ndarray
    between: np.ndarray
    within: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, n_iter: int = 10) -> TwoCovariancePLDA:
        """Moment initialisation, then EM on the two covariances."""
        mu, between, within = _class_scatter(vectors, labels)
        _check_within_rank(within)
        codes, _ = pd.factorize(pd.Series(labels))
        x = vectors.astype(np.float64) - mu
        n_classes = codes.max() + 1
        counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
        sums = np.zeros((n_classes, x.shape[1]))
        np.add.at(sums, codes, x)
        dim = x.shape[1]
        eye = np.eye(dim)
        for _ in range(n_iter):
            b_inv = np.linalg.inv(between + 1e-9 * eye)
            w_inv = np.linalg.inv(within + 1e-9 * eye)
            # E-step: posterior of each speaker variable given its n utterances.
            new_between = np.zeros((dim, dim))
            y_all = np.zeros((n_classes, dim))
            cov_sum_weighted = np.zeros((dim, dim))
            for n in np.unique(counts):
                members = counts == n
                post_cov = np.linalg.inv(b_inv + n * w_inv)
                y = sums[members] @ w_inv.T @ post_cov.T
                y_all[members] = y
                new_between += members.sum() * post_cov + y.T @ y
                cov_sum_weighted += members.sum() * n * post_cov
            between = new_between / n_classes
            dev = x - y_all[codes]
            within = (dev.T @ dev + cov_sum_weighted) / counts.sum()
        return cls(mean=mu, between=(between + between.T) / 2, within=(within + within.T) / 2)

    def scoring_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        total = self.between + self.within
        total_inv = np.linalg.inv(total)
        a = np.linalg.inv(total - self.between @ total_inv @ self.between)
        q = total_inv - a
        p = total_inv @ self.between @ a
        return q, p

    def score_trials(self, table: EmbeddingTable, trials: pd.DataFrame) -> np.ndarray:
        """Log-likelihood ratio per trial, up to a constant (``[n_trials]``)."""
        enrol, test = trial_rows(table, trials)
        used = np.unique(np.r_[enrol, test])
        x = np.asarray(table.vectors[used], dtype=np.float64) - self.mean
        q, p = self.scoring_matrices()
        quad = 0.5 * np.einsum("ij,jk,ik->i", x, q, x)
        xp = x @ p
        position = np.full(len(table), -1, dtype=np.int64)
        position[used] = np.arange(len(used))
        e, t = position[enrol], position[test]
        return quad[e] + quad[t] + paired_dot(xp, x, e, t)


def lda_plda_pipeline_fit(
    train_vectors: np.ndarray, train_labels: np.ndarray, lda_dim: int | None
) -> tuple[LDA | None, TwoCovariancePLDA]:
    """Length-normalise, optionally LDA-project and re-normalise, then fit PLDA."""
    x = normalise_embeddings(train_vectors)
    lda = None
    if lda_dim:
        lda = LDA.fit(x, train_labels, lda_dim)
        x = normalise_embeddings(lda.transform(x))
    return lda, TwoCovariancePLDA.fit(x, train_labels)


def plda_scores(
    table: EmbeddingTable,
    trials: pd.DataFrame,
    lda: LDA | None,
    plda: TwoCovariancePLDA,
) -> np.ndarray:
    """Apply the same length-norm / LDA transform as in training, then PLDA-score."""
    trained_dim = len(lda.mean) if lda is not None else len(plda.mean)
    if table.dim != trained_dim:
        raise ValueError(
            f"PLDA: test embeddings have dimension {table.dim}, but the "
            f"{'LDA' if lda is not None else 'PLDA'} model was trained on {trained_dim}"
        )
    enrol, test = trial_rows(table, trials)
    used = np.unique(np.r_[enrol, test])
    keys = [table.keys_[i] for i in used]
    x = normalise_embeddings(np.asarray(table.vectors[used]))
    if lda is not None:
        x = normalise_embeddings(lda.transform(x))
    return plda.score_trials(EmbeddingTable(keys, x), trials)
