"""``build_loss(config)``: a loss module from a parameters mapping.

Config keys (one flat mapping; keys a loss does not use are accepted and ignored, so one
parameter block can serve every variant), with defaults:

- ``name`` (required): ``"ce"``, ``"aam"``, ``"bce"`` or ``"ctc"``
- ``margin`` 0.2 (aam, radians), ``scale`` 30 (aam), ``easy_margin`` false (aam)
- ``label_smoothing`` 0 (ce, aam)
- ``pos_weight`` null (bce)
- ``length_normalization`` ``"none"`` (ctc; or ``"frames"``)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from sv_kedro.losses.classification import AAMSoftmaxLoss, CrossEntropyLoss
from sv_kedro.losses.ctc_speaker import CTCSpeakerLoss
from sv_kedro.losses.pair_bce import PairBCELoss

LOSS_NAMES = ("ce", "aam", "bce", "ctc")
_DEFAULTS: dict[str, Any] = {
    "margin": 0.2,
    "scale": 30.0,
    "easy_margin": False,
    "label_smoothing": 0.0,
    "pos_weight": None,
    "length_normalization": "none",
}
_NUMBER_KEYS = ("margin", "scale", "label_smoothing", "pos_weight")


def build_loss(config: Mapping[str, Any]) -> nn.Module:
    """The loss named by ``config["name"]`` with its options (see the module docstring).

    Raises ``KeyError`` for a missing ``name`` or an unknown key and ``ValueError``/``TypeError``
    for a bad value, each naming the key.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"build_loss: config must be a mapping, got {type(config).__name__}")
    if "name" not in config:
        raise KeyError(f"build_loss: config has no 'name' (one of {list(LOSS_NAMES)})")
    unknown = sorted(set(config) - set(_DEFAULTS) - {"name"})
    if unknown:
        raise KeyError(
            f"build_loss: unknown key(s) {unknown}; known keys: ['name', *{sorted(_DEFAULTS)}]"
        )
    name = str(config["name"]).lower()
    options = {**_DEFAULTS, **{key: value for key, value in config.items() if key != "name"}}
    # pos_weight (when set) too: a string reached ``pos_weight > 0`` and failed with a bare
    # "'>' not supported", and true was taken for 1.
    numbers = [key for key in _NUMBER_KEYS if key != "pos_weight" or options[key] is not None]
    for key in numbers:
        if isinstance(options[key], bool) or not isinstance(options[key], (int, float)):
            raise TypeError(f"build_loss: '{key}' must be a number, got {options[key]!r}")
    if not isinstance(options["easy_margin"], bool):
        raise TypeError(
            f"build_loss: 'easy_margin' must be true/false, got {options['easy_margin']!r}"
        )

    if name == "ce":
        return CrossEntropyLoss(label_smoothing=options["label_smoothing"])
    if name == "aam":
        return AAMSoftmaxLoss(
            margin=options["margin"],
            scale=options["scale"],
            easy_margin=options["easy_margin"],
            label_smoothing=options["label_smoothing"],
        )
    if name == "bce":
        return PairBCELoss(pos_weight=options["pos_weight"])
    if name == "ctc":
        return CTCSpeakerLoss(length_normalization=options["length_normalization"])
    raise ValueError(
        f"build_loss: unknown loss name {config['name']!r}; expected one of {list(LOSS_NAMES)}"
    )
