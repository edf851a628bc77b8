"""DINO self-supervised speaker embeddings: a student and an EMA teacher over multi-crops.

DINO (Caron et al. 2021; for speakers e.g. Chen et al. 2023) learns without labels: a
*student* network sees every crop of an utterance (2 long "global" crops and several short
"local" ones, each augmented differently); a *teacher* with the same architecture sees only
the global crops. Both end in a projection head that maps the speaker embedding to
``n_prototypes`` scores. The student is trained to predict, from any crop, the teacher's
sharpened (low temperature) and centred distribution of the *other* global crops; the
teacher is an exponential moving average (EMA) of the student and gets no gradient.
Centring (subtracting a running mean of the teacher's scores) and sharpening together keep
the outputs from collapsing to one prototype or to the uniform distribution.

``DinoModel(config)`` holds student and teacher as ``SpeakerModel`` encoders built by
``build_model`` (so the teacher exports as an ordinary checkpoint, see
:func:`encoder_checkpoint_payload`), the two heads and the ``center`` buffer. Config::

    encoder: {architecture: ecapa_tdnn, ecapa: {...}, fbank: {...}}   # any build_model config
    head: {hidden_dim: 512, bottleneck_dim: 128, n_prototypes: 4096, n_layers: 3}
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sv_kedro.models.factory import build_model, normalize_model_config
from sv_kedro.utils.params import as_int, check_sizes

HEAD_DEFAULTS: dict[str, Any] = {
    "hidden_dim": 512,
    "bottleneck_dim": 128,
    "n_prototypes": 4096,
    "n_layers": 3,
}


class DinoHead(nn.Module):
    """Projection head: MLP ``E -> hidden -> ... -> bottleneck``, L2 normalisation, then the
    cosine against ``n_prototypes`` unit-norm prototypes (DINO's weight-normalised last layer
    with its gain fixed to 1). ``[batch, E] -> [batch, n_prototypes]`` in ``[-1, 1]``."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        n_prototypes: int = 4096,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        # A zero width trains silently: hidden_dim 0 cuts the encoder off the loss,
        # n_prototypes 0 gives a loss of 0 and no gradient at all.
        check_sizes(
            "DINO head",
            {
                "hidden_dim": hidden_dim,
                "bottleneck_dim": bottleneck_dim,
                "n_prototypes": n_prototypes,
                "n_layers": n_layers,
            },
        )
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, bottleneck_dim))
        nn.init.normal_(self.prototypes, std=1.0 / math.sqrt(bottleneck_dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, embeddings: Tensor) -> Tensor:
        projected = F.normalize(self.mlp(embeddings), dim=-1)
        return projected @ F.normalize(self.prototypes, dim=-1).t()


class DinoOutput(NamedTuple):
    """``student [views, batch, K]`` (global views first, then local), ``teacher [globals,
    batch, K]`` (no gradient): raw head outputs before temperature and centring."""

    student: Tensor
    teacher: Tensor


def normalize_dino_config(config: Mapping[str, Any], where: str = "dino.model") -> dict[str, Any]:
    """Validate ``{"encoder": {...}, "head": {...}}`` and fill in defaults (JSON-able).

    The encoder is an embedding-only ``build_model`` config (``n_classes`` forced to 0).
    ``where`` is the parameter path of ``config`` for the errors
    (``ssl_pseudo_labeling.dino.model``); every head size must be a whole number >= 1.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping, got {config!r}")
    unknown = sorted(set(config) - {"architecture", "encoder", "head"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: encoder, head")
    # ``architecture`` is only there so that a checkpoint's config reads back; any other
    # value (``ecapa_tdnn``, meant for the encoder) would be ignored without a word.
    if config.get("architecture", "dino") != "dino":
        raise ValueError(
            f"{where}.architecture must be 'dino' (or left out), got "
            f"{config['architecture']!r}; the encoder's architecture goes under "
            f"{where}.encoder.architecture"
        )
    if "encoder" not in config:
        raise ValueError(f"{where}: 'encoder' (a build_model config) is required")
    encoder_config = config["encoder"]
    if not isinstance(encoder_config, Mapping):
        raise ValueError(f"{where}.encoder must be a mapping, got {encoder_config!r}")
    encoder = normalize_model_config({**dict(encoder_config), "n_classes": 0}, f"{where}.encoder")
    given = config.get("head") or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}.head must be a mapping, got {given!r}")
    bad = sorted(set(given) - set(HEAD_DEFAULTS))
    if bad:
        raise ValueError(f"{where}.head: unknown key(s) {bad}; allowed: {sorted(HEAD_DEFAULTS)}")
    head = {**HEAD_DEFAULTS, **dict(given)}
    for key in HEAD_DEFAULTS:
        # "--params ...head.hidden_dim=0" would otherwise train: a zero-width MLP passes
        # nothing of the encoder to the loss, zero prototypes give a loss of 0.
        head[key] = as_int(head[key], f"{where}.head.{key}")
        if head[key] < 1:
            raise ValueError(f"{where}.head.{key} must be >= 1, got {head[key]}")
    result = {"architecture": "dino", "encoder": encoder, "head": head}
    json.dumps(result)
    return result


class DinoModel(nn.Module):
    """Student and EMA teacher (encoder + head each) and the teacher-centring buffer.

    ``forward(global_waves [B, G, Tg], local_waves [B, L, Tl] | None) -> DinoOutput``.
    Only the student's parameters require gradients; :meth:`update_teacher` and
    :meth:`update_center` are called by the training task between steps.
    """

    architecture = "dino"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.model_config = normalize_dino_config(config)
        self.student = build_model(self.model_config["encoder"])
        embedding_dim = int(self.student.embedding_dim)
        self.student_head = DinoHead(embedding_dim, **self.model_config["head"])
        self.teacher = copy.deepcopy(self.student)
        self.teacher_head = copy.deepcopy(self.student_head)
        for parameter in (*self.teacher.parameters(), *self.teacher_head.parameters()):
            parameter.requires_grad_(False)
        self.register_buffer("center", torch.zeros(self.model_config["head"]["n_prototypes"]))

    @property
    def embedding_dim(self) -> int:
        return int(self.student.embedding_dim)

    def _views(self, encoder: nn.Module, head: nn.Module, waves: Tensor) -> Tensor:
        """``[B, V, T]`` crops of one length -> head outputs ``[V, B, K]`` (one pass)."""
        batch, views, frames = waves.shape
        flat = waves.transpose(0, 1).reshape(views * batch, frames)
        scores = head(encoder(flat).embedding)
        return scores.reshape(views, batch, -1)

    def forward(self, global_waves: Tensor, local_waves: Tensor | None = None) -> DinoOutput:
        student = [self._views(self.student, self.student_head, global_waves)]
        if local_waves is not None and local_waves.shape[1] > 0:
            student.append(self._views(self.student, self.student_head, local_waves))
        with torch.no_grad():
            teacher = self._views(self.teacher, self.teacher_head, global_waves)
        return DinoOutput(torch.cat(student, dim=0), teacher.detach())

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- m * teacher + (1 - m) * student`` for parameters; buffers (batch-norm
        statistics) are copied from the student."""
        pairs = ((self.teacher, self.student), (self.teacher_head, self.student_head))
        for teacher, student in pairs:
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
            for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
                t.copy_(s)

    @torch.no_grad()
    def update_center(self, batch_center: Tensor, momentum: float) -> None:
        """``center <- m * center + (1 - m) * batch_center`` (``[K]``, the batch mean of the
        teacher's outputs, already averaged over processes by the caller)."""
        self.center.mul_(momentum).add_(batch_center.to(self.center), alpha=1.0 - momentum)


def dino_loss(
    output: DinoOutput,
    center: Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> Tensor:
    """Per-utterance DINO loss ``[B]``: the mean over (teacher global view ``g``, student
    view ``v != g``) of ``H(softmax((t_g - c) / T_t), log_softmax(s_v / T_s))``."""
    teacher = F.softmax((output.teacher.float() - center) / teacher_temperature, dim=-1)
    student = F.log_softmax(output.student.float() / student_temperature, dim=-1)
    n_global, n_views = teacher.shape[0], student.shape[0]
    total = torch.zeros(student.shape[1], device=student.device)
    terms = 0
    for g in range(n_global):
        for v in range(n_views):
            if v == g:
                continue
            total = total - (teacher[g] * student[v]).sum(dim=-1)
            terms += 1
    if terms == 0:
        raise ValueError("DINO needs at least two views (2 global crops, or 1 global + locals)")
    return total / terms


def cosine_schedule(start: float, end: float, step: int, total_steps: int) -> float:
    """Cosine ramp from ``start`` (step 0) to ``end`` (``total_steps`` and after)."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1.0) / 2.0


def encoder_checkpoint_payload(
    dino_payload: Mapping[str, Any], which: str = "teacher"
) -> dict[str, Any]:
    """A format-1 checkpoint of one DINO encoder, loadable by ``model_from_checkpoint``.

    ``dino_payload`` is a checkpoint of a :class:`DinoModel` (its ``model_state`` keys are
    ``student.*``, ``teacher.*``, ...); the result holds the ``which`` encoder as an ordinary
    embedding model (``architecture`` and ``model_config`` of the encoder, no training state).
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    config = dino_payload["model_config"]
    if config.get("architecture") != "dino":
        raise ValueError(
            f"not a DINO checkpoint: architecture {config.get('architecture')!r} in model_config"
        )
    prefix = f"{which}."
    state = {
        key[len(prefix) :]: value.detach().clone()
        for key, value in dino_payload["model_state"].items()
        if key.startswith(prefix)
    }
    if not state:
        raise ValueError(f"DINO checkpoint has no {which} weights")
    training = dino_payload.get("training_state") or {}
    encoder_config = copy.deepcopy(config["encoder"])
    return {
        "format_version": 1,
        "architecture": encoder_config["architecture"],
        "model_config": encoder_config,
        "model_state": state,
        "training_state": {
            "epoch": int(training.get("epoch", 0)),
            "step": int(training.get("step", 0)),
            "optimizer": None,
            "scheduler": None,
            "rng": None,
            "sampler": None,
            "loss_gate": None,
        },
        "metrics": {k: float(v) for k, v in (dino_payload.get("metrics") or {}).items()},
    }


def build_dino_model(config: Mapping[str, Any]) -> DinoModel:
    """Model builder of DINO training workers (``TrainingJob.model_builder``)."""
    return DinoModel(config)


__all__ = [
    "HEAD_DEFAULTS",
    "DinoHead",
    "DinoModel",
    "DinoOutput",
    "build_dino_model",
    "cosine_schedule",
    "dino_loss",
    "encoder_checkpoint_payload",
    "normalize_dino_config",
]
