"""Schedules of a training run: the learning rate (warm-up, then cosine) and the EMA teacher's momentum."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, *, total_steps: int, start: float, end: float) -> float:
    """Teacher momentum rising from ``start`` to ``end`` along a half cosine over training."""
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.lerp_(s, 1.0 - momentum)
