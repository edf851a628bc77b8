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

import numpy as np
import pandas as pd

from sv_kedro.scoring.cosine import normalise_embeddings, paired_dot, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingTable


def _class_scatter(
    vectors: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global mean, between-class and within-class covariance (``[dim, dim]`` each)."""
    codes, _ = pd.factorize(pd.Series(labels))
    n_classes = codes.max() + 1
    if n_classes < 2:
        raise ValueError("LDA/PLDA need embeddings of at least two speakers")
    x = vectors.astype(np.float64)
    mu = x.mean(axis=0)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, codes, x)
    class_means = sums / counts[:, None]
    centred_means = class_means - mu
    between = (centred_means * counts[:, None]).T @ centred_means / counts.sum()
    within_dev = x - class_means[codes]
    within = within_dev.T @ within_dev / counts.sum()
    return mu, between, within


@dataclass
class LDA:
    """Linear discriminant analysis projection to ``dim`` dimensions."""

    mean: np.ndarray
    projection: np.ndarray  # [in_dim, out_dim]

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, dim: int) -> LDA:
        """Fit on length-normalised ``vectors [n, d]`` with speaker ``labels [n]``."""
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
    enrol, test = trial_rows(table, trials)
    used = np.unique(np.r_[enrol, test])
    keys = [table.keys_[i] for i in used]
    x = normalise_embeddings(np.asarray(table.vectors[used]))
    if lda is not None:
        x = normalise_embeddings(lda.transform(x))
    return plda.score_trials(EmbeddingTable(keys, x), trials)
