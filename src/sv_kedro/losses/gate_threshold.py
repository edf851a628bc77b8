"""Dynamic loss-gate threshold (DLG): a 2-component GMM on last epoch's log-losses.

With noisy pseudo-labels the per-sample log-losses of an epoch are bimodal: samples whose
label agrees with what the model has learnt sit in a low mode, mislabelled ones in a high
mode (Miara, Lepage & Dehak 2024, after Han et al.'s loss-gated learning). The gate
threshold for the next epoch is where the two fitted components are equally likely:

    w₁·N(x; μ₁, σ₁²) = w₂·N(x; μ₂, σ₂²)

Taking logs gives the quadratic ``a·x² + b·x + c = 0`` with

    a = 1/(2σ₂²) − 1/(2σ₁²)
    b = μ₁/σ₁² − μ₂/σ₂²
    c = μ₂²/(2σ₂²) − μ₁²/(2σ₁²) + log(w₁·σ₂ / (w₂·σ₁))

(linear when σ₁ = σ₂). Only a root strictly between the two means separates the modes;
the other root of unequal-variance Gaussians lies out in a tail. When there is not exactly
one such root, or the fit is not a usable bimodal one (too few samples, a component with a
tiny weight, means too close for their spreads by Ashman's D, or a mixture density without a
dip between the means), the previous threshold is kept and ``GateFit.reason`` says why.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateFit:
    """Result of ``fit_gate_threshold``.

    ``threshold`` is the one to use next (the fitted one, or ``previous`` when
    ``changed`` is false); ``means``/``variances``/``weights`` are the components sorted by
    mean (empty when no fit was made); ``separation`` is Ashman's D
    ``√2·|μ₂ − μ₁| / √(σ₁² + σ₂²)`` (NaN without a fit); ``n_samples`` counts the finite
    log-losses used.
    """

    threshold: float
    changed: bool
    reason: str
    means: tuple[float, ...] = ()
    variances: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    separation: float = math.nan
    n_samples: int = 0

    def to_dict(self) -> dict:
        """Plain Python types only (JSON-able, loadable with ``torch.load(weights_only=True)``)."""
        record = asdict(self)
        for key in ("means", "variances", "weights"):
            record[key] = [float(v) for v in record[key]]
        return record


def weighted_gaussian_intersections(
    means: tuple[float, float], variances: tuple[float, float], weights: tuple[float, float]
) -> list[float]:
    """All ``x`` with ``w₁·N(x; μ₁, σ₁²) = w₂·N(x; μ₂, σ₂²)`` (0, 1 or 2 points, sorted)."""
    (mu1, mu2), (var1, var2), (w1, w2) = means, variances, weights
    if min(var1, var2) <= 0 or min(w1, w2) <= 0:
        raise ValueError(
            f"weighted_gaussian_intersections: variances {variances} and weights {weights} "
            "must be positive"
        )
    a = 1.0 / (2.0 * var2) - 1.0 / (2.0 * var1)
    b = mu1 / var1 - mu2 / var2
    c = (
        mu2 * mu2 / (2.0 * var2)
        - mu1 * mu1 / (2.0 * var1)
        + math.log(w1 / w2)
        + 0.5 * math.log(var2 / var1)
    )
    scale = max(abs(b), abs(c), 1.0)
    if abs(a) <= 1e-12 * scale:  # equal variances: the quadratic degenerates to a line
        return [] if b == 0 else [-c / b]
    discriminant = b * b - 4.0 * a * c
    if discriminant < 0:
        return []
    # Numerically stable form: avoids cancellation between -b and the square root.
    q = -0.5 * (b + math.copysign(math.sqrt(discriminant), b))
    if q == 0:  # b == 0 and discriminant == 0: a double root at 0
        return [0.0]
    return sorted({q / a, c / q})


def _mixture_density(
    x: float, means: np.ndarray, variances: np.ndarray, weights: np.ndarray
) -> float:
    return float(
        np.sum(
            weights * np.exp(-0.5 * (x - means) ** 2 / variances) / np.sqrt(2 * np.pi * variances)
        )
    )


def _keep(previous: float, reason: str, **fit: object) -> GateFit:
    # A unimodal loss distribution is the expected case in many epochs (the gate holds by
    # design); only a fit that failed for another reason deserves a warning.
    level = logging.INFO if reason.startswith("unimodal") else logging.WARNING
    logger.log(level, "loss gate: keeping threshold %.4f: %s", previous, reason)
    return GateFit(threshold=float(previous), changed=False, reason=reason, **fit)  # type: ignore[arg-type]


def _threshold_or_problem(
    means: np.ndarray,
    variances: np.ndarray,
    weights: np.ndarray,
    separation: float,
    converged: bool,
    min_weight: float,
    min_separation: float,
) -> tuple[float | None, str]:
    """``(threshold, "")`` for a usable bimodal fit, else ``(None, why not)``."""
    if not converged:
        return None, "the GMM did not converge"
    if weights.min() < min_weight:
        return None, (
            f"unimodal: one component has weight {weights.min():.4f} < min_weight={min_weight}"
        )
    if separation < min_separation:
        return None, (
            f"unimodal: means {means[0]:.3f} and {means[1]:.3f} are too close for their "
            f"spreads (Ashman's D {separation:.3f} < min_separation={min_separation})"
        )
    roots = weighted_gaussian_intersections(
        (means[0], means[1]), (variances[0], variances[1]), (weights[0], weights[1])
    )
    between = [root for root in roots if means[0] < root < means[1]]
    if len(between) != 1:
        return None, (
            f"{len(between)} intersections of the weighted densities between the means "
            f"{means[0]:.3f} and {means[1]:.3f} (all roots: {[round(r, 4) for r in roots]})"
        )
    threshold = float(between[0])
    if min_separation > 0:  # 0 asks for no bimodality: any intersection between the means
        dip = _mixture_density(threshold, means, variances, weights)
        peaks = min(_mixture_density(float(m), means, variances, weights) for m in means)
        if dip >= peaks:
            return None, (
                f"unimodal: the mixture density has no dip at the intersection {threshold:.3f}"
                f" ({dip:.4g} >= {peaks:.4g} at the lower of the two means)"
            )
    return threshold, ""


def fit_gate_threshold(
    log_losses: np.ndarray,
    previous: float,
    seed: int = 0,
    *,
    min_samples: int = 100,
    min_weight: float = 0.02,
    min_separation: float = 2.0,
    n_init: int = 2,
) -> GateFit:
    """Fit the DLG threshold on one epoch's per-sample log-losses ``[n]``.

    Args:
        log_losses: natural logs of the per-sample losses; non-finite values (``log 0``)
            are dropped and counted in the reason.
        previous: the threshold in use, kept when no good fit is found.
        seed: ``random_state`` of the GMM (k-means initialisation), for reproducibility.
        min_samples: fewer finite values than this keep ``previous``.
        min_weight: a component lighter than this means a single mode: keep ``previous``.
        min_separation: the smallest Ashman's D accepted (2 is where two equal-weight,
            equal-variance Gaussians start to form two modes). Above 0 the mixture density
            must also dip at the threshold; 0 accepts any fit whose weighted densities cross
            once between the means, as the DLG paper does.
        n_init: GMM restarts (the best likelihood wins).
    """
    values = np.asarray(log_losses, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    dropped = values.size - finite.size
    note = f" ({dropped} non-finite values dropped)" if dropped else ""
    if finite.size < min_samples:
        return _keep(
            previous,
            f"only {finite.size} finite log-losses, fewer than min_samples={min_samples}{note}",
            n_samples=int(finite.size),
        )
    if float(np.std(finite)) < 1e-9:
        return _keep(previous, f"all log-losses are equal{note}", n_samples=int(finite.size))

    mixture = GaussianMixture(
        n_components=2, covariance_type="full", random_state=seed, n_init=n_init, max_iter=500
    )
    # One thread: on 1-D data the OpenMP/BLAS pools of the k-means initialisation cost far
    # more than they save (10x slower on a busy 2-core machine).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(finite[:, None])
    order = np.argsort(mixture.means_.ravel())
    means = mixture.means_.ravel()[order]
    variances = mixture.covariances_.reshape(-1)[order]
    weights = mixture.weights_[order]
    separation = float(math.sqrt(2.0) * (means[1] - means[0]) / math.sqrt(variances.sum()))
    fit = {
        "means": tuple(float(v) for v in means),
        "variances": tuple(float(v) for v in variances),
        "weights": tuple(float(v) for v in weights),
        "separation": separation,
        "n_samples": int(finite.size),
    }
    threshold, problem = _threshold_or_problem(
        means, variances, weights, separation, mixture.converged_, min_weight, min_separation
    )
    if threshold is None:
        return _keep(previous, problem + note, **fit)
    return GateFit(
        threshold=threshold,
        changed=True,
        reason=f"fitted: threshold {threshold:.4f} between means {means[0]:.3f} and "
        f"{means[1]:.3f} (weights {weights[0]:.3f}/{weights[1]:.3f}, Ashman's D "
        f"{separation:.2f}){note}",
        **fit,  # type: ignore[arg-type]
    )
