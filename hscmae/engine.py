"""One training epoch of HSC-MAE or a trainable baseline, as facebookresearch/mae's ``engine_pretrain.py``.

An epoch is a shuffled pass in ``steps_per_epoch`` full batches. Each step sets the learning rate
(:func:`hscmae.schedules.lr_factor`), asks the student for its loss terms
(:meth:`hscmae.model.HSCMAE.forward_loss`), weighs them (:class:`hscmae.losses.UncertaintyWeights`),
steps the optimiser and moves the EMA teacher. The first non-finite loss term or gradient norm
stops training with ``FloatingPointError``, naming it and the step; a term that is 0 at every step of
an epoch stops it with ``ValueError`` (:func:`check_alive`). Epochs and steps are counted from 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hscmae import diagnostics, losses
from hscmae.config import MethodConfig
from hscmae.model import HSCMAE
from hscmae.schedules import ema_momentum, ema_update, lr_factor

OFFSETS = {"global": 1.0}  # makes the deep-CCA term -mean(corr) + 1 >= 0 for the uncertainty weights


@dataclass
class TrainingState:
    """Everything one training run updates: the student, its EMA teacher (or ``None``), the loss weights,
    the optimiser (each group holds its ``base_lr``) and the generator of data order and masking noise."""

    method: MethodConfig
    student: HSCMAE
    teacher: nn.ModuleDict | None
    weights: losses.UncertaintyWeights
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    steps_per_epoch: int

    def modules(self) -> dict[str, nn.Module]:
        """The modules a checkpoint saves, by file name."""
        found = {"student": self.student, "loss_weights": self.weights}
        return found if self.teacher is None else {**found, "teacher": self.teacher}


def check_finite(values: dict[str, Tensor], *, method: str, epoch: int, step: int) -> None:
    """Raise ``FloatingPointError`` naming the first of ``values`` (scalars) that is not finite, and the step."""
    stacked = torch.stack([v.detach().double() for v in values.values()])
    if not torch.isfinite(stacked).all():
        name, value = next((n, float(v)) for n, v in zip(values, stacked) if not math.isfinite(float(v)))
        raise FloatingPointError(f"{method}: {name} is {value} at epoch {epoch}, step {step}; training stopped")


def check_alive(zero_steps: dict[str, int], steps: int, *, method: str, epoch: int) -> None:
    """Raise ``ValueError`` naming the first loss term that was exactly 0 at all ``steps`` steps of ``epoch``
    (``zero_steps``: term -> steps at which it was 0): it trains nothing, and a learned weight would only meet
    its ``+ s`` and fall without bound (an empty reconstruction mask does that)."""
    dead = [name for name, count in zero_steps.items() if count == steps]
    if dead:
        why = " (no entry of any clip was masked)" if dead[0] == "recon" else ""
        raise ValueError(f"{method}: the {dead[0]} term is 0 at every step of epoch {epoch}{why}, so it trains "
                         "nothing; training stopped")


def train_one_epoch(state: TrainingState, data: dict[str, Tensor], *, epoch: int, step: int) -> dict[str, float | dict]:
    """One shuffled pass over ``data`` (``m: [N, D]`` raw pooled features, ``m_seq``/``m_valid`` in time mode):
    epoch ``epoch`` (from 1), after ``step`` steps of the run.

    Returns the mean of each loss term and of the ``total``, and ``grad_share``
    (:func:`hscmae.diagnostics.gradient_shares` of the weighted terms on the epoch's first batch).
    """
    cfg, tc = state.method.loss, state.method.train
    total_steps = tc.epochs * state.steps_per_epoch
    learn = cfg.learn_weights and epoch > cfg.weight_warmup_epochs
    state.student.train()
    n = len(data["audio"])
    order = torch.randperm(n, generator=state.generator).to(data["audio"].device)
    size = min(tc.batch_size, n)
    sums: dict[str, float] = {}
    zero_steps: dict[str, int] = {}
    shares: dict[str, float] = {}
    for i in range(state.steps_per_epoch):
        idx = order[i * size:(i + 1) * size]
        factor = lr_factor(step, warmup_steps=tc.warmup_epochs * state.steps_per_epoch, total_steps=total_steps)
        for group in state.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        terms = state.student.forward_loss({k: v[idx] for k, v in data.items()}, config=cfg, teacher=state.teacher,
                                           generator=state.generator)
        total = state.weights(terms, offsets=OFFSETS, learn=learn)
        if i == 0:  # once per epoch, on its first batch
            weight = state.weights.weights()
            weighted = {name: value * (weight[name] if learn else 1.0) for name, value in terms.items()}
            shares = diagnostics.gradient_shares(weighted, list(state.student.encoders.parameters()))
        state.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = nn.utils.clip_grad_norm_(state.student.parameters(), tc.grad_clip)
        check_finite({**terms, "total loss": total, "gradient norm": grad_norm},
                     method=state.method.name, epoch=epoch, step=step + 1)
        state.optimizer.step()
        if state.teacher is not None:
            momentum = ema_momentum(step, total_steps=total_steps, start=tc.ema_start, end=tc.ema_end)
            ema_update(state.teacher, state.student.encoders, momentum)
        for name, value in {**terms, "total": total}.items():
            found = float(value.detach())
            sums[name] = sums.get(name, 0.0) + found
            zero_steps[name] = zero_steps.get(name, 0) + (found == 0.0)
        step += 1
    check_alive({name: zero_steps[name] for name in terms}, state.steps_per_epoch, method=state.method.name,
                epoch=epoch)
    return {**{k: v / state.steps_per_epoch for k, v in sums.items()}, "grad_share": shares}
