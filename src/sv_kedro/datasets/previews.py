"""What kedro-viz shows for our datasets: PNG images, tables and JSON.

kedro-viz picks the renderer from the *name* of ``preview()``'s return annotation
(``ImagePreview``, ``TablePreview``, ``JSONPreview``), so the datasets annotate with the
kedro-datasets types imported here. Figures are drawn with the Agg backend on a bare
``Figure`` (no pyplot state), which is safe in a server thread.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from kedro_datasets._typing import ImagePreview, JSONPreview, TablePreview

__all__ = [
    "ImagePreview",
    "JSONPreview",
    "TablePreview",
    "dataframe_table_preview",
    "embeddings_table_preview",
    "json_preview",
    "log_mel_spectrogram",
    "waveform_png_preview",
]


def log_mel_spectrogram(
    waveform: np.ndarray,
    sample_rate: int,
    n_mels: int = 64,
    window_ms: float = 25.0,
    hop_ms: float = 10.0,
) -> np.ndarray:
    """Log (dB) mel power spectrogram of a mono ``[time]`` waveform -> ``[n_mels, frames]``."""
    import torch
    import torchaudio.functional as taf

    win_length = max(16, round(sample_rate * window_ms / 1000))
    hop_length = max(1, round(sample_rate * hop_ms / 1000))
    n_fft = 1 << (win_length - 1).bit_length()
    signal = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    if signal.numel() < n_fft:
        signal = torch.nn.functional.pad(signal, (0, n_fft - signal.numel()))
    spectrum = torch.stft(
        signal,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=torch.hann_window(win_length),
        center=True,
        return_complex=True,
    )
    power = spectrum.abs().pow(2)  # [freq, frames]
    filters = taf.melscale_fbanks(
        n_freqs=n_fft // 2 + 1,
        f_min=0.0,
        f_max=sample_rate / 2,
        n_mels=n_mels,
        sample_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )  # [freq, n_mels]
    mel = filters.T @ power
    return (10.0 * torch.log10(mel.clamp_min(1e-10))).numpy()


def waveform_png_preview(
    waveform: np.ndarray,
    sample_rate: int,
    title: str = "",
    n_mels: int = 64,
    width_inches: float = 6.0,
    dpi: int = 80,
) -> ImagePreview:
    """Base64 PNG: the waveform (each channel) above the log-mel spectrogram of the mix.

    ``waveform`` is ``[time]`` or ``[time, channels]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wave = np.asarray(waveform, dtype=np.float32)
    channels = wave[:, None] if wave.ndim == 1 else wave
    mono = channels.mean(axis=1)
    seconds = channels.shape[0] / sample_rate if sample_rate else 0.0

    figure = Figure(figsize=(width_inches, 3.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    wave_axes, mel_axes = figure.subplots(2, 1, sharex=True, height_ratios=(1, 1.4))
    times = np.arange(channels.shape[0]) / sample_rate
    # Thousands of points are all a small PNG can show; decimate long signals.
    step = max(1, channels.shape[0] // 4000)
    for index in range(channels.shape[1]):
        wave_axes.plot(
            times[::step],
            channels[::step, index],
            linewidth=0.5,
            label=f"ch {index}" if channels.shape[1] > 1 else None,
        )
    if channels.shape[1] > 1:
        wave_axes.legend(loc="upper right", fontsize=6)
    wave_axes.set_ylabel("amplitude", fontsize=7)
    wave_axes.set_title(title or f"{seconds:.2f} s at {sample_rate} Hz", fontsize=8)
    if channels.shape[0]:
        mel = log_mel_spectrogram(mono, sample_rate, n_mels=n_mels)
        mel_axes.imshow(
            mel,
            origin="lower",
            aspect="auto",
            cmap="magma",
            extent=(0.0, seconds, 0, n_mels),
            vmin=float(mel.max()) - 80.0,
            vmax=float(mel.max()),
        )
    mel_axes.set_ylabel("mel bin", fontsize=7)
    mel_axes.set_xlabel("time (s)", fontsize=7)
    for axes in (wave_axes, mel_axes):
        axes.tick_params(labelsize=6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return ImagePreview(base64.b64encode(buffer.getvalue()).decode("ascii"))


def embeddings_table_preview(
    keys: Sequence[str], vectors: np.ndarray, nrows: int = 10, nvalues: int = 4
) -> TablePreview:
    """Table of the first ``nrows`` embeddings: key, dim, L2 norm and the first values.

    ``vectors`` is ``[n, dim]`` (may be memory-mapped; only the shown rows are read).
    """
    shown = min(nrows, len(keys))
    rows = np.asarray(vectors[:shown], dtype=np.float64)
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    columns = ["key", "dim", "norm"] + [f"v{i}" for i in range(min(nvalues, dim))]
    data = [
        [keys[i], dim, _json_number(np.linalg.norm(rows[i]))]
        + [_json_number(v) for v in rows[i, :nvalues]]
        for i in range(shown)
    ]
    return TablePreview({"index": list(range(shown)), "columns": columns, "data": data})


def dataframe_table_preview(frame: pd.DataFrame, nrows: int = 10) -> TablePreview:
    """The first ``nrows`` rows in pandas' ``split`` layout with JSON-safe cells."""
    head = frame.head(nrows)
    data = [[_json_cell(v) for v in row] for row in head.itertuples(index=False, name=None)]
    return TablePreview(
        {
            "index": [_json_cell(i) for i in head.index],
            "columns": list(map(str, head.columns)),
            "data": data,
        }
    )


def json_preview(obj: Any) -> JSONPreview:
    """``obj`` as JSON text (non-finite floats become ``null``)."""
    return JSONPreview(json.dumps(_json_safe(obj), indent=2, sort_keys=False))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return _json_cell(obj)


def _json_cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_number(value)
    return str(value)


def _json_number(value: Any) -> float | None:
    number = float(value)
    return round(number, 6) if math.isfinite(number) else None
