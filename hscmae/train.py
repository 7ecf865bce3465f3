"""Training of HSC-MAE and the trainable baselines: :func:`fit` builds a run, loops over epochs, keeps the best.

One epoch (:func:`hscmae.engine.train_one_epoch`) is a shuffled pass in ``N // batch_size`` full
batches (the remainder, different every epoch, is left out; a training set smaller than a batch is
one batch), so deep CCA never sees a tiny batch. After every epoch the student embeds the clean
validation clips, ``scorer`` rates them, and the best-scoring student is kept. Training stops after
``train.epochs`` epochs at most, sooner once ``train.patience`` epochs in a row brought no better val
score (:func:`stops`; the learning-rate and EMA schedules span the full budget either way). Methods
without the local term get a linear-CCA output map fitted on the training latents before scoring
(:func:`hscmae.inference.fit_output_map`). Each epoch's history entry also holds
:mod:`hscmae.diagnostics` figures (gradient shares, soft-positive purity, validation canonical
correlations). With a ``checkpoint_dir`` every epoch is checkpointed and a killed run resumes, its
patience count included. Epochs are counted from 1 everywhere (history, logs, the selected epoch).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hscmae import diagnostics, losses
from hscmae.checkpoint import BEST, load_checkpoint, load_module, save_checkpoint, save_module
from hscmae.config import MethodConfig, TrainConfig
from hscmae.data import ClipArrays
from hscmae.engine import TrainingState, train_one_epoch
from hscmae.inference import embed, fit_output_map, resolve_device
from hscmae.model import HSCMAE, seconds_dropped
from pipeline.vocab import MODALITIES

DIAGNOSTIC_CLIPS = 4096  # training clips the validation canonical correlations are fitted on
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


@dataclass
class TrainResult:
    """``model``: the best-on-val student (eval mode); ``history``: one dict per epoch trained (``epoch`` from 1);
    ``best_epoch``: the selected epoch; ``stopped_epoch``: the last one trained (``train.epochs`` unless early
    stopping ended training sooner)."""

    method: str
    seed: int
    model: nn.Module
    history: list[dict]
    best_epoch: int
    stopped_epoch: int

    @property
    def val_score(self) -> float:
        """The selected epoch's val score."""
        return self.history[self.best_epoch - 1]["val_score"]


def stops(train: TrainConfig, *, epoch: int, best_epoch: int) -> bool:
    """Whether training ends after ``epoch`` epochs whose best val score came at ``best_epoch`` (both from 1; 0:
    none yet): the budget ``train.epochs`` is spent, or ``train.patience`` epochs went by without a better score."""
    return epoch >= train.epochs or epoch - best_epoch >= train.patience


def _tensors(data: ClipArrays, *, time_mode: bool, device: torch.device) -> dict[str, Tensor]:
    """Pooled raw features ``m: [N, D]``, ``label: [N]`` (diagnostics only); in time mode also
    ``m_seq: [N, T, D]`` and ``m_valid: [N, T]``."""
    out = {m: torch.from_numpy(x).to(device) for m, x in zip(MODALITIES, data.pooled())}
    out["label"] = torch.from_numpy(np.asarray(data.label_id)).to(device)
    if time_mode:
        for m in MODALITIES:
            out[f"{m}_seq"] = torch.from_numpy(data.features(m)).to(device)
            out[f"{m}_valid"] = torch.from_numpy(data.valid(m)).to(device)
    return out


def warn_degenerate_cca(method: MethodConfig, batch: int) -> None:
    """Warn when a CCA within batches of ``batch`` clips (no more than twice the latent size) measures nothing,
    naming the level it hurts (:func:`fit` calls this before training)."""
    forced = losses.forced_unit_correlations(batch, method.model.latent)
    hurt = [name for name, on in (("the global term", method.loss.use_global),
                                  ("the teacher's canonical space", method.loss.needs_teacher)) if on]
    if hurt and forced:
        verb = "hold" if len(hurt) > 1 else "holds"
        warnings.warn(f"{method.name}: CCA within batches of {batch} clips of {method.model.latent}-d latents is "
                      f"degenerate: {forced} canonical correlations are 1 for any data, so {' and '.join(hurt)} "
                      f"{verb} chance correlation, not signal (use batches of more than {2 * method.model.latent} "
                      "clips)", stacklevel=3)


def check_masking(method: MethodConfig, train: ClipArrays) -> None:
    """Raise ``ValueError`` when ``mask_mode="time"`` would drop no second of any training clip in some modality
    (clip-level features, or a ratio too small for the clips' lengths): the student's view would be the clean
    one there, and a masked reconstruction term 0 at every step (:func:`fit` calls this before training)."""
    loss = method.loss
    if loss.mask_ratio == 0 or loss.mask_mode != "time":
        return
    seconds = {m: train.valid(m).sum(axis=1) for m in MODALITIES}
    untouched = [m for m, n in seconds.items() if not (seconds_dropped(n, loss.mask_ratio) > 0).any()]
    if untouched:
        names = " or ".join(untouched)
        longest = ", ".join(f"{m} {int(seconds[m].max())}" for m in untouched)
        recon = f", and the masked reconstruction of {names} 0 at every step" \
            if loss.use_recon and loss.recon_target == "masked" else ""
        raise ValueError(f"{method.name}: mask_mode 'time' at mask_ratio {loss.mask_ratio} drops no second of any "
                         f"training clip's {names} (longest clip: {longest} s): the student would see {names} "
                         f"unmasked{recon}; use mask_mode 'auto' or 'element' (entries of the pooled vector)")


def _build(method: MethodConfig, train: ClipArrays, *, seed: int, device: torch.device) -> TrainingState:
    torch.manual_seed(seed)
    warn_degenerate_cca(method, min(method.train.batch_size, len(train)))
    student = HSCMAE(in_dims=train.dims, config=method.model)
    student.set_input_stats(dict(zip(MODALITIES, train.pooled())))
    student.to(device)
    teacher = copy.deepcopy(student.encoders).eval().requires_grad_(False) if method.loss.needs_teacher else None
    weights = losses.UncertaintyWeights(names=method.loss.active).to(device)
    tc = method.train
    optimizer = torch.optim.AdamW([
        {"params": list(student.parameters()), "weight_decay": tc.weight_decay, "base_lr": tc.lr},
        {"params": list(weights.parameters()), "weight_decay": 0.0, "base_lr": tc.weights_lr},
    ], lr=tc.lr, fused=True)  # one kernel per step instead of a loop over tensors (CPU and CUDA)
    return TrainingState(method=method, student=student, teacher=teacher, weights=weights, optimizer=optimizer,
                         generator=torch.Generator().manual_seed(seed),
                         steps_per_epoch=max(1, len(train) // tc.batch_size))


def fit(method: MethodConfig, train: ClipArrays, val: ClipArrays, *, seed: int, scorer: Scorer,
        checkpoint_dir: Path | None = None, progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``method`` on ``train`` for at most ``method.train.epochs`` epochs, stopping early after
    ``method.train.patience`` epochs without a better val score; select the epoch whose student scores best on ``val``.

    Args:
        method: a ``kind="trainable"`` method config; ``mask_mode="auto"`` is resolved for ``train``
            (:meth:`hscmae.config.MethodConfig.for_input`).
        train, val: clips; val is only embedded (clean) and scored.
        seed: seeds initialisation, data order, masking and dropout.
        scorer: ``(audio_emb [Nv, L], visual_emb [Nv, L], labels [Nv]) -> float``, higher is better.
        checkpoint_dir: where to checkpoint after each epoch and resume from; also gets ``best.safetensors``.
        progress: show a tqdm bar advancing per epoch.
        on_epoch: called with each epoch's history entry (``epoch`` from 1, losses, ``val_score``, ``best_epoch``
            so far), e.g. to log it.
    """
    if method.kind != "trainable":
        raise ValueError(f"method {method.name!r} is {method.kind}, not trainable")
    train.check_finite("train")
    val.check_finite("val")
    method = method.for_input(clip_level=bool(train.clip_level_modalities))
    check_masking(method, train)
    device = resolve_device(method.train.device)
    run = _build(method, train, seed=seed, device=device)
    data = _tensors(train, time_mode=method.loss.mask_mode == "time", device=device)
    train_sample = train.subset(np.random.default_rng(0).permutation(len(train))[:DIAGNOSTIC_CLIPS])
    identity = {"method": method.to_dict(), "seed": seed, "train_clips": len(train), "dims": train.dims}
    state = {**identity, "epoch": 0, "step": 0, "history": [], "best_epoch": 0, "best_score": None}
    best_state = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        resumed = load_checkpoint(checkpoint_dir, modules=run.modules(), optimizer=run.optimizer, identity=identity)
        if resumed is not None:
            state, rng = resumed
            torch.set_rng_state(rng["torch"])
            run.generator.set_state(rng["generator"])
    bar = tqdm(total=method.train.epochs, initial=state["epoch"], desc=f"{method.name} seed {seed}",
               unit="epoch", disable=not progress)
    while not stops(method.train, epoch=state["epoch"], best_epoch=state["best_epoch"]):
        epoch = state["epoch"] + 1  # the epoch trained now, counted from 1
        start = time.perf_counter()
        stats = train_one_epoch(run, data, epoch=epoch, step=state["step"])
        if not method.loss.use_local:
            fit_output_map(run.student, train, ridge=method.loss.cca_ridge)
        val_embedding = embed(run.student, val)
        score = float(scorer(*val_embedding, val.label_id))
        if not math.isfinite(score):
            raise FloatingPointError(f"{method.name}: scorer returned {score} on val at epoch {epoch}")
        stats.update(diagnostics.epoch_figures(run.student, run.teacher, data, loss=method.loss,
                                               batch_size=method.train.batch_size, train_sample=train_sample,
                                               val_embedding=val_embedding))
        seconds = time.perf_counter() - start
        state["step"] += run.steps_per_epoch
        state["epoch"] = epoch
        if state["best_score"] is None or score > state["best_score"]:
            state["best_epoch"], state["best_score"] = epoch, score
            best_state = {k: v.detach().clone() for k, v in run.student.state_dict().items()}
            if checkpoint_dir is not None:
                save_module(checkpoint_dir / BEST, run.student,
                            {"method": method.name, "seed": str(seed), "epoch": str(epoch), "val_score": str(score)})
        state["history"].append({"epoch": epoch, **stats, "weights": run.weights.weights(), "val_score": score,
                                 "best_epoch": state["best_epoch"], "seconds": seconds})
        if on_epoch is not None:
            on_epoch(state["history"][-1])
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, epoch=epoch, modules=run.modules(), optimizer=run.optimizer,
                            rng={"torch": torch.get_rng_state(), "generator": run.generator.get_state()}, state=state)
        bar.set_postfix(loss=f"{stats['total']:.3f}", val=f"{score:.4f}")
        bar.update(1)
    bar.close()
    if best_state is not None:
        run.student.load_state_dict(best_state)
    elif checkpoint_dir is not None and state["best_epoch"] > 0:
        load_module(checkpoint_dir / BEST, run.student)
    run.student.eval()
    return TrainResult(method=method.name, seed=seed, model=run.student, history=state["history"],
                       best_epoch=state["best_epoch"], stopped_epoch=state["epoch"])
