"""L2-SP: an L2 penalty pulling fine-tuned weights towards the pre-trained ones.

``R = Σ_w ‖w − w₀‖²`` over the encoder's parameters, ``w₀`` the pre-trained values (Li et al.
2018, "explicit inductive bias for transfer learning"; used by Miara et al. 2024 for WavLM).

The paper combines it with the task loss in a normalised form,

    L = L_task / sg(L_task) + λ · R / sg(R)          (sg = stop-gradient, i.e. ``detach``)

whose value is always ``1 + λ`` and whose gradient is ``∇L_task / L_task + λ · ∇R / R``:
each term contributes its *relative* gradient, so λ balances the two independently of their
scales. ``R / sg(R)`` is 0/0 while the weights still equal ``w₀`` (R = 0, e.g. at step 0);
then the regulariser term is left out (it has no gradient to give there anyway,
``∇R = 2(w − w₀) = 0``), and likewise while ``R <= min_penalty``. A task loss of exactly 0
enters as it is (value 0, its own gradient) instead of 0/0; a negative one is an error
(dividing by it would flip the gradient). The combined value is constant, so log the task
loss and ``last_penalty`` rather than the combination.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class L2SPRegularizer(nn.Module):
    """Penalty ``Σ‖w − w₀‖²`` for the parameters of ``module``.

    Args:
        module: the encoder whose parameters are regularised (not registered as a
            sub-module: this object's ``state_dict`` holds only the references ``w₀``).
        reference: ``{parameter name: tensor}`` pre-trained values; ``None`` snapshots the
            module's current parameters. Every parameter of ``module`` must be present, with
            the same shape; extra entries (buffers, other heads) are ignored.
        only_trainable: regularise only parameters that have ``requires_grad`` now (saves
            the memory of frozen ones' references, but a parameter unfrozen later, e.g.
            after a warm-up with a frozen encoder, is then never regularised).
        min_penalty: ``combine`` leaves the regulariser out while ``R <= min_penalty``.

    The references are buffers, so ``.to(device)`` moves them; keep them on the encoder's
    device for speed, or on the CPU to save accelerator memory (``penalty`` then copies each
    reference to its parameter's device on every call).
    """

    def __init__(
        self,
        module: nn.Module,
        reference: Mapping[str, Tensor] | None = None,
        only_trainable: bool = False,
        min_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        # object.__setattr__ keeps the encoder out of this module's children and state_dict.
        object.__setattr__(self, "_target", module)
        self.min_penalty = float(min_penalty)
        self._names: list[str] = []
        for name, parameter in module.named_parameters():
            if only_trainable and not parameter.requires_grad:
                continue
            if reference is None:
                value = parameter.detach().clone()
            else:
                if name not in reference:
                    raise KeyError(
                        f"L2SPRegularizer: reference has no entry for parameter {name!r}"
                    )
                value = reference[name].detach().clone()
                if value.shape != parameter.shape:
                    raise ValueError(
                        f"L2SPRegularizer: reference {name!r} has shape {tuple(value.shape)}, "
                        f"the parameter has {tuple(parameter.shape)}"
                    )
                value = value.to(dtype=parameter.dtype, device=parameter.device)
            self.register_buffer(self._buffer_name(name), value)
            self._names.append(name)
        if not self._names:
            raise ValueError("L2SPRegularizer: the module has no parameter to regularise")
        self.last_penalty: float | None = None

    @staticmethod
    def _buffer_name(parameter_name: str) -> str:
        return "ref__" + parameter_name.replace(".", "__")

    @property
    def parameter_names(self) -> list[str]:
        return list(self._names)

    def reference_items(self) -> list[tuple[str, Tensor]]:
        """``(parameter name, reference value w₀)`` pairs, e.g. to save for an exact resume."""
        return [(name, getattr(self, self._buffer_name(name))) for name in self.parameter_names]

    def penalty(self) -> Tensor:
        """``R = Σ‖w − w₀‖²`` (scalar, float32, differentiable w.r.t. the parameters)."""
        parameters = dict(self._target.named_parameters())
        terms = []
        for name in self._names:
            if name not in parameters:
                raise KeyError(f"L2SPRegularizer: the module no longer has parameter {name!r}")
            parameter = parameters[name]
            reference = getattr(self, self._buffer_name(name)).to(parameter.device)
            terms.append((parameter.float() - reference.float()).pow(2).sum())
        return torch.stack(terms).sum()

    def combine(self, task_loss: Tensor, weight: float) -> Tensor:
        """``L_task / sg(L_task) + weight · R / sg(R)`` (see the module docstring).

        The regulariser term is dropped while ``R <= min_penalty`` (0/0 otherwise); a task
        loss of exactly 0 is used un-normalised. ``last_penalty`` keeps ``R`` for logging.
        """
        if task_loss.dim() != 0:
            raise ValueError(
                f"L2SPRegularizer.combine: task_loss must be a scalar, got {tuple(task_loss.shape)}"
            )
        if weight < 0:
            raise ValueError(f"L2SPRegularizer.combine: weight must be >= 0, got {weight}")
        task_value = task_loss.detach()
        if float(task_value) < 0:
            # dividing by a negative value would turn descent into ascent
            raise ValueError(
                f"L2SPRegularizer.combine: the task loss must be >= 0, got {float(task_value)}"
            )
        if float(task_value) == 0.0:
            combined = task_loss
        else:
            combined = task_loss / task_value
        penalty = self.penalty()
        penalty_value = penalty.detach()
        self.last_penalty = float(penalty_value)
        if weight > 0 and self.last_penalty > self.min_penalty:
            combined = combined + weight * (penalty / penalty_value).to(combined.device)
        return combined
