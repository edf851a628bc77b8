"""A 2-D picture of an embedding table for kedro-viz: PCA, coloured by speaker or pseudo-label.

Vectors are L2-normalised before the projection because every back-end scores by cosine:
the picture then shows the geometry the scores see. Large tables are subsampled (seeded,
so a rebuilt site shows the same points).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sv_kedro.datasets.previews import ImagePreview

SPEAKER_LABELS = "speaker"
UNLABELLED = "(unlabelled)"
_LEGEND_MAX_LABELS = 12


class ProjectionError(ValueError):
    """Labels or vectors that cannot be projected; the message names the file or key."""


def speaker_of(utt_id: str) -> str:
    """The speaker folder of an utterance id: its first path component (``id10001/...``)."""
    return utt_id.split("/", 1)[0]


def sample_rows(n_rows: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all rows, or ``max_points`` of them drawn without replacement."""
    if max_points < 2:
        raise ProjectionError(f"max_points must be at least 2, got {max_points}")
    if n_rows <= max_points:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_points, replace=False))


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``[n, dim]`` rows (L2-normalised first) on their two main axes.

    Returns ``(coords [n, 2], explained_variance_ratio [2])``; a table of one row or of
    rank one gets zeros on the missing axes.
    """
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ProjectionError(f"expected a non-empty [n, dim] array, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise ProjectionError(f"row {bad} has non-finite values")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    centred = rows - rows.mean(axis=0, keepdims=True)
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    axes = right[:2]
    coords = np.zeros((rows.shape[0], 2))
    coords[:, : axes.shape[0]] = centred @ axes.T
    variance = singular**2
    explained = np.zeros(2)
    total = variance.sum()
    if total > 0:
        explained[: min(2, variance.size)] = variance[:2] / total
    return coords, explained


def read_label_table(path: str | Path, column: str) -> dict[str, str]:
    """``utt_id -> label`` from a parquet or CSV table with ``utt_id`` and ``column``."""
    path = Path(path)
    if not path.exists():
        raise ProjectionError(f"{path}: label table not found")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path, columns=None)
    elif path.suffix.lower() in (".csv", ".tsv"):
        frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    else:
        raise ProjectionError(f"{path}: label table must be .parquet, .csv or .tsv")
    missing = [name for name in ("utt_id", column) if name not in frame.columns]
    if missing:
        raise ProjectionError(f"{path}: missing column(s) {missing}; it has {list(frame.columns)}")
    return dict(zip(frame["utt_id"].astype(str), frame[column].astype(str), strict=True))


def labels_for(
    keys: Sequence[str], labels_from: str = SPEAKER_LABELS, label_column: str = "label"
) -> list[str]:
    """One label per key: the speaker folder (``labels_from="speaker"``) or the
    ``label_column`` of the table at path ``labels_from``; keys it lacks are unlabelled."""
    if labels_from == SPEAKER_LABELS:
        return [speaker_of(key) for key in keys]
    table = read_label_table(labels_from, label_column)
    return [table.get(key, UNLABELLED) for key in keys]


def projection_png_preview(
    coords: np.ndarray,
    labels: Sequence[str],
    explained: np.ndarray,
    title: str,
    label_name: str = SPEAKER_LABELS,
    dpi: int = 80,
) -> ImagePreview:
    """Base64 PNG scatter of ``coords [n, 2]``, one colour per label (grey: unlabelled)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(labels) != coords.shape[0]:
        raise ProjectionError(f"{len(labels)} labels for {coords.shape[0]} points")
    label_array = np.asarray(labels, dtype=object)
    names = sorted({str(label) for label in labels} - {UNLABELLED})
    colours = _label_colours(names, colormaps)

    figure = Figure(figsize=(5.5, 4.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    unlabelled = label_array == UNLABELLED
    if unlabelled.any():
        axes.scatter(*coords[unlabelled].T, s=8, c="#bbbbbb", label=UNLABELLED, linewidths=0)
    for name in names:
        mask = label_array == name
        axes.scatter(*coords[mask].T, s=10, color=colours[name], label=name, linewidths=0)
    if 0 < len(names) <= _LEGEND_MAX_LABELS:
        axes.legend(fontsize=6, markerscale=1.5, loc="best", title=label_name, title_fontsize=7)
    axes.set_title(f"{title}\n{len(names)} distinct {label_name} labels", fontsize=8)
    axes.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)", fontsize=7)
    axes.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)", fontsize=7)
    axes.tick_params(labelsize=6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return ImagePreview(base64.b64encode(buffer.getvalue()).decode("ascii"))


def _label_colours(names: Sequence[str], colormaps: Mapping[str, object]) -> dict[str, tuple]:
    if len(names) <= 10:
        palette = colormaps["tab10"]
        return {name: palette(i) for i, name in enumerate(names)}
    if len(names) <= 20:
        palette = colormaps["tab20"]
        return {name: palette(i) for i, name in enumerate(names)}
    # Many labels: spread them over a perceptual map, interleaved so that neighbours in
    # sorted order (often neighbouring clusters) do not get near-identical colours.
    palette = colormaps["turbo"]
    positions = np.linspace(0.0, 1.0, len(names))
    order = np.argsort(np.arange(len(names)) * 7919 % len(names))
    return {name: palette(positions[order[i]]) for i, name in enumerate(names)}
