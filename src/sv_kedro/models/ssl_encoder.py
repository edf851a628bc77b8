"""Self-supervised speech encoders (wav2vec 2.0, WavLM) through ``transformers``.

``SSLEncoder(config)`` wraps a ``Wav2Vec2Model`` or ``WavLMModel`` built from a hub id or local
folder (``from_pretrained``), from an original fairseq/UniLM ``.pt`` checkpoint
(:mod:`sv_kedro.models.fairseq_conversion`), or from a config with random weights (offline
use, tests, the "no pre-training" ablation ``reset_weights: true``). Loading and its checks
live in :mod:`sv_kedro.models.encoder_loading`.

The forward pass is run step by step on the model's own sub-modules (CNN feature encoder ->
feature projection -> [SpecAugment] -> [prefix tokens] -> transformer) so that pooling can
insert a CLS token and the paired model can build ``[CLS] a [SEP] b [END]`` sequences.

Padding. Padded batches give the same valid frames as one-by-one processing (up to float
error): the CNN convolutions have no padding, so valid output frames only see valid samples
(frame counts from ``_get_feat_extract_output_lengths``); the encoder zeroes padded frames
before its positional convolution (as zero padding does for a single utterance) and masks
them out of attention. Group-norm feature encoders (wav2vec2-base, WavLM-Base+) normalise the
first CNN layer over time, which would let padding leak into every frame: here that group
norm is computed over the valid frames of each utterance only (a masked group norm), which
is exactly what one-by-one processing computes. Layer-norm feature encoders are per-frame and
need nothing special.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sv_kedro.models.encoder_loading import (
    ENCODER_KINDS,
    HF_TRAINING_KEYS,
    build_encoder_model,
    check_config_overrides,
    check_pretrained,
)
from sv_kedro.models.masking import VARIANCE_FLOOR, lengths_to_mask
from sv_kedro.utils.params import as_bool, as_float, as_int

ENCODER_DEFAULTS: dict[str, Any] = {
    "kind": "wav2vec2",
    "pretrained": None,
    "hf_config": None,
    "config_overrides": {},
    "reset_weights": False,
    "completely_freeze_feature_extractor": False,
    "freeze_encoder_steps": 0,
    "gradient_checkpointing": False,
    "output_hidden_states": False,
    "normalize_waveform": None,
    "allow_pickle": False,
    **dict.fromkeys(HF_TRAINING_KEYS),
}
_SWITCHES: tuple[str, ...] = (
    "reset_weights",
    "completely_freeze_feature_extractor",
    "gradient_checkpointing",
    "output_hidden_states",
    "allow_pickle",
)
_MASK_LENGTHS: tuple[str, ...] = ("mask_time_length", "mask_feature_length")


class EncoderOutput(NamedTuple):
    """``frames [batch, T, D]``, ``mask [batch, T]`` (bool) and optionally all hidden states
    ``[batch, T, D, L+1]`` (input of the first transformer layer, then each layer's output)."""

    frames: Tensor
    mask: Tensor
    hidden_states: Tensor | None = None


def check_encoder_config(config: Mapping[str, Any], where: str = "encoder") -> dict[str, Any]:
    """Fill defaults and check every setting, naming ``<where>.<key>``; returns a new dict
    with numbers converted (``"5"`` -> 5) and ``pretrained`` as a string."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping, got {config!r}")
    unknown = sorted(set(config) - set(ENCODER_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(ENCODER_DEFAULTS)}")
    merged = {**copy.deepcopy(ENCODER_DEFAULTS), **copy.deepcopy(dict(config))}
    if not isinstance(merged["kind"], str) or merged["kind"] not in ENCODER_KINDS:
        raise ValueError(f"{where}.kind: {merged['kind']!r} is not one of {sorted(ENCODER_KINDS)}")
    _check_switches(merged, where)
    _check_numbers(merged, where)
    merged["pretrained"] = check_pretrained(merged["pretrained"], where)
    if merged["hf_config"] is not None and not isinstance(merged["hf_config"], Mapping):
        raise ValueError(
            f"{where}.hf_config must be a mapping or null, got {merged['hf_config']!r}"
        )
    if merged["hf_config"] is not None and merged["pretrained"] is not None:
        # Each one defines the model; taking one would silently drop the other.
        raise ValueError(f"{where}: set pretrained or hf_config, not both")
    merged["config_overrides"] = check_config_overrides(
        merged["kind"], merged["config_overrides"], where
    )
    return merged


def _check_switches(merged: dict[str, Any], where: str) -> None:
    # A string such as "false" is truthy; as_bool refuses it instead.
    for key in _SWITCHES:
        as_bool(merged[key], f"{where}.{key}")
    if merged["normalize_waveform"] is not None:
        as_bool(merged["normalize_waveform"], f"{where}.normalize_waveform")


def _check_numbers(merged: dict[str, Any], where: str) -> None:
    steps = as_int(merged["freeze_encoder_steps"], f"{where}.freeze_encoder_steps")
    if steps < 0:
        raise ValueError(f"{where}.freeze_encoder_steps must be >= 0, got {steps}")
    merged["freeze_encoder_steps"] = steps
    for key in HF_TRAINING_KEYS:
        if merged[key] is None:
            continue
        if key in _MASK_LENGTHS:
            length = as_int(merged[key], f"{where}.{key}")
            if length < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {length}")
            merged[key] = length
            continue
        rate = as_float(merged[key], f"{where}.{key}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{where}.{key} must be in [0, 1], got {rate}")
        merged[key] = rate


def _masked_group_norm(norm: nn.GroupNorm, features: Tensor, mask: Tensor) -> Tensor:
    """GroupNorm over channels-in-group x valid time only. ``features [batch, C, T]``."""
    batch, channels, frames = features.shape
    groups = norm.num_groups
    grouped = features.float().view(batch, groups, channels // groups, frames)
    weights = mask.to(grouped.dtype).view(batch, 1, 1, frames)
    count = weights.sum(dim=-1, keepdim=True).clamp(min=1.0) * (channels // groups)
    mean = (grouped * weights).sum(dim=(-2, -1), keepdim=True) / count
    variance = (((grouped - mean) ** 2) * weights).sum(dim=(-2, -1), keepdim=True) / count
    normed = ((grouped - mean) / torch.sqrt(variance + norm.eps)).view(batch, channels, frames)
    if norm.affine:
        normed = normed * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)
    return normed.to(features.dtype)


class SSLEncoder(nn.Module):
    """A wav2vec2/WavLM encoder with masks, freezing schedule and hidden-state capture.

    ``forward(waves [batch, samples], lengths [batch] | None, prefix [n, D] | None)``
    -> :class:`EncoderOutput`. ``lengths`` are valid samples per row (``None``: all valid).
    ``prefix`` vectors (e.g. a CLS token) are prepended to the transformer input.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.settings = check_encoder_config(config)
        self.kind: str = self.settings["kind"]
        self.model, self.conversion_report, checkpoint_normalize = build_encoder_model(
            self.settings
        )
        normalize = self.settings["normalize_waveform"]
        self.normalize_waveform = bool(checkpoint_normalize if normalize is None else normalize)
        self.hidden_size: int = int(self.model.config.hidden_size)
        self.num_layers: int = int(self.model.config.num_hidden_layers)
        self.output_hidden_states: bool = bool(self.settings["output_hidden_states"])
        self.freeze_encoder_steps: int = int(self.settings["freeze_encoder_steps"])
        self.freeze_cnn: bool = bool(self.settings["completely_freeze_feature_extractor"])
        self.gradient_checkpointing: bool = bool(self.settings["gradient_checkpointing"])
        if self.gradient_checkpointing:
            # Non-reentrant checkpointing gives parameter gradients even when the input
            # (raw audio) does not require grad.
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
                self.model.activation_checkpointing_enable(kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._collector: dict[int, Tensor] | None = None
        self._install_hidden_state_hooks()
        self._encoder_frozen = False
        self.set_step(0)

    # ----------------------------------------------------------------- construction
    def export_hf_config(self) -> dict[str, Any]:
        """The full transformers config as a JSON-able dict (rebuilds offline, no download)."""
        return json.loads(self.model.config.to_json_string(use_diff=False))

    def _install_hidden_state_hooks(self) -> None:
        encoder = self.model.encoder

        def store(slot: int):
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                # Also fires during checkpoint recomputation in backward; ignored there.
                if self._collector is not None:
                    self._collector[slot] = output[0] if isinstance(output, tuple) else output

            return hook

        # encoder.dropout is applied once, right before the first transformer layer.
        encoder.dropout.register_forward_hook(store(0))
        for index, layer in enumerate(encoder.layers):
            layer.register_forward_hook(store(index + 1))

    # --------------------------------------------------------------------- freezing
    def encoder_frozen(self, step: int) -> bool:
        """Whether the whole encoder is frozen at optimiser step ``step``."""
        return step < self.freeze_encoder_steps

    def set_step(self, step: int) -> None:
        """Apply the freezing schedule at optimiser step ``step`` (call before each step).

        ``completely_freeze_feature_extractor``: the CNN's parameters have
        ``requires_grad=False`` for good (optimisers built afterwards leave them out).
        ``freeze_encoder_steps``: while ``step < N`` the whole encoder runs without autograd,
        so no encoder parameter gets a gradient (``grad`` stays ``None`` and torch optimisers
        skip it, weight decay included); ``requires_grad`` itself stays True, so an optimiser
        or DDP wrapper built at step 0 still covers the encoder once it thaws. Under DDP, set
        ``find_unused_parameters: true`` for the frozen steps. Vectors fed into the frozen
        transformer (the ``first+cls`` token, the paired model's CLS/SEP/END) get no
        gradient during those steps either: only what sits after the encoder trains.
        """
        self._encoder_frozen = self.encoder_frozen(step)
        for name, parameter in self.model.named_parameters():
            in_cnn = name.startswith("feature_extractor.")
            parameter.requires_grad_(not (in_cnn and self.freeze_cnn))

    @contextmanager
    def _freeze_scope(self) -> Iterator[None]:
        """No autograd while the encoder is frozen (see :meth:`set_step`)."""
        if self._encoder_frozen:
            with torch.no_grad():
                yield
        else:
            yield

    # ---------------------------------------------------------------------- forward
    @property
    def min_input_samples(self) -> int:
        """The fewest samples the CNN turns into one frame (its receptive field: 400, 25 ms
        at 16 kHz, for wav2vec2/WavLM Base)."""
        config = self.model.config
        field = 1
        for kernel, stride in zip(
            reversed(config.conv_kernel), reversed(config.conv_stride), strict=True
        ):
            field = (field - 1) * stride + kernel
        return field

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Samples -> CNN frames, ``[batch]`` (int64)."""
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def _normalize(self, waves: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(waves.dtype)
        counts = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (waves * weights).sum(dim=1, keepdim=True) / counts
        variance = (((waves - mean) ** 2) * weights).sum(dim=1, keepdim=True) / counts
        return (waves - mean) / torch.sqrt(variance + VARIANCE_FLOOR) * weights

    def _cnn(self, waves: Tensor, lengths: Tensor | None) -> Tensor:
        """``waves [batch, samples]`` -> CNN features ``[batch, C, T]``."""
        features = waves[:, None]
        config = self.model.config
        layer_lengths = lengths
        for layer, kernel, stride in zip(
            self.model.feature_extractor.conv_layers,
            config.conv_kernel,
            config.conv_stride,
            strict=True,
        ):
            if layer_lengths is not None:
                layer_lengths = torch.div(layer_lengths - kernel, stride, rounding_mode="floor") + 1
            group_norm = isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm)
            if group_norm and layer_lengths is not None:

                def run(
                    x: Tensor, layer: nn.Module = layer, valid: Tensor = layer_lengths
                ) -> Tensor:
                    conv = layer.conv(x)
                    frame_mask = lengths_to_mask(valid, conv.shape[-1])
                    return layer.activation(_masked_group_norm(layer.layer_norm, conv, frame_mask))

                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    features = checkpoint(run, features, use_reentrant=False)
                else:
                    features = run(features)
            else:
                features = layer(features)
        return features

    def extract_features(self, waves: Tensor, lengths: Tensor | None = None) -> EncoderOutput:
        """CNN + feature projection (+ SpecAugment in training): ``[batch, T, D]`` and mask."""
        if waves.dim() != 2:
            raise ValueError(
                f"SSLEncoder: waves must be [batch, samples], got {tuple(waves.shape)}"
            )
        if waves.shape[1] < self.min_input_samples:
            # torch's own error ("Kernel size can't be greater than actual input size")
            # names neither the input nor the setting to change.
            raise ValueError(
                f"SSLEncoder: inputs of {waves.shape[1]} samples are shorter than the "
                f"{self.min_input_samples} samples the CNN needs for one frame (25 ms at 16 kHz "
                "for Base models): lengthen the crops (data.crop_seconds) or leave out "
                "shorter utterances"
            )
        if lengths is not None:
            lengths = lengths.to(waves.device).long()
            if lengths.shape != (waves.shape[0],):
                raise ValueError(
                    f"SSLEncoder: lengths must be [batch]={waves.shape[0]}, "
                    f"got {tuple(lengths.shape)}"
                )
            if int(lengths.max()) > waves.shape[1] or int(lengths.min()) <= 0:
                raise ValueError(
                    f"SSLEncoder: lengths must be in [1, {waves.shape[1]}], got {lengths.tolist()}"
                )
        if self.normalize_waveform:
            sample_mask = (
                lengths_to_mask(lengths, waves.shape[1])
                if lengths is not None
                else torch.ones_like(waves, dtype=torch.bool)
            )
            waves = self._normalize(waves, sample_mask)
        with self._freeze_scope():
            return self._project(waves, lengths)

    def _project(self, waves: Tensor, lengths: Tensor | None) -> EncoderOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_cnn):
            features = self._cnn(waves, lengths).transpose(1, 2)  # [batch, T, C]
        frame_count = features.shape[1]
        if lengths is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            frame_lengths = self.output_lengths(lengths)
            if int(frame_lengths.min()) < 1:
                raise ValueError(
                    "SSLEncoder: an utterance is too short for the CNN, which needs "
                    f"{self.min_input_samples} samples for one frame (lengths {lengths.tolist()})"
                )
            mask = lengths_to_mask(frame_lengths, frame_count)
        hidden, _ = self.model.feature_projection(features)
        config = self.model.config
        if self.training and (config.mask_time_prob > 0 or config.mask_feature_prob > 0):
            if config.mask_time_prob > 0 and frame_count < config.mask_time_length:
                # transformers' own error names its internal arguments only.
                raise ValueError(
                    f"SSLEncoder: {frame_count} frame(s) per input, but SpecAugment masks spans "
                    f"of mask_time_length={config.mask_time_length} frames in training: "
                    "lengthen the crops (data.crop_seconds) or lower mask_time_length"
                )
            hidden = self.model._mask_hidden_states(hidden, attention_mask=mask)
        return EncoderOutput(hidden, mask)

    def encode(
        self, hidden: Tensor, mask: Tensor, output_hidden_states: bool | None = None
    ) -> EncoderOutput:
        """Run the transformer on ``hidden [batch, T, D]`` with ``mask [batch, T]``."""
        want_states = (
            self.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        self._collector = {} if want_states else None
        padded = not bool(mask.all())
        try:
            with self._freeze_scope():
                if padded:
                    # The encoder writes zeros into padded frames in place; give it its own
                    # tensor.
                    out = self.model.encoder(hidden.clone(), attention_mask=mask.bool())
                else:
                    # Without padding (training crops) no mask is the same computation, minus
                    # the mask building and WavLM's deprecated mixed-mask attention path.
                    out = self.model.encoder(hidden)
            collected = self._collector
        finally:
            self._collector = None
        frames = out.last_hidden_state
        if not want_states:
            return EncoderOutput(frames, mask)
        states: list[Tensor] = []
        for slot in range(self.num_layers + 1):
            # A layer skipped by LayerDrop passes its input through unchanged.
            states.append(collected.get(slot, states[-1] if states else hidden))
        return EncoderOutput(frames, mask, torch.stack(states, dim=-1))

    def forward(
        self,
        waves: Tensor,
        lengths: Tensor | None = None,
        prefix: Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> EncoderOutput:
        """``waves [batch, samples]`` -> frames ``[batch, T(+n), D]``, mask, hidden states.

        ``prefix [n, D]`` is prepended after the feature projection (mask extended by ``n``
        valid positions), so the transformer sees it at positions ``0..n-1``.
        """
        hidden, mask = self.extract_features(waves, lengths)[:2]
        if prefix is not None:
            if prefix.dim() != 2 or prefix.shape[1] != self.hidden_size:
                raise ValueError(
                    f"SSLEncoder: prefix must be [n, {self.hidden_size}], got {tuple(prefix.shape)}"
                )
            batch = hidden.shape[0]
            tokens = prefix.to(hidden.dtype).unsqueeze(0).expand(batch, -1, -1)
            hidden = torch.cat([tokens, hidden], dim=1)
            prefix_mask = torch.ones(batch, prefix.shape[0], dtype=torch.bool, device=mask.device)
            mask = torch.cat([prefix_mask, mask], dim=1)
        return self.encode(hidden, mask, output_hidden_states)
