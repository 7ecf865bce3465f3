"""Training for HSC-MAE and the trainable baselines: :func:`fit` and :func:`embed`.

One epoch is a shuffled pass in ``N // batch_size`` full batches (the remainder, different every
epoch, is left out; a training set smaller than a batch is one batch), so deep CCA never sees a tiny
batch. After every epoch the student embeds the clean validation clips, ``scorer`` rates them, and the
best-scoring student is kept. Methods without the local term get a linear-CCA output map fitted on
the training latents before scoring (see :func:`fit_cca_projection`). Each epoch's history entry
also holds :mod:`hscmae.diagnostics` figures (gradient shares, soft-positive purity, validation
canonical correlations). Training stops with ``FloatingPointError`` on the first non-finite loss
term or gradient norm, naming it and the step.
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
from hscmae.cca import fit_cca_tensors
from hscmae.checkpoint import BEST, load_checkpoint, load_module, save_checkpoint, save_module
from hscmae.config import LossConfig, MethodConfig
from hscmae.data import ClipArrays
from hscmae.model import HSCMAE, mask_elements, mask_seconds
from pipeline.vocab import MODALITIES

DIAGNOSTIC_CLIPS = 4096  # training clips the validation canonical correlations are fitted on
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


@dataclass
class TrainResult:
    """``model``: the best-on-val student (eval mode); ``history``: one dict per epoch."""

    method: str
    seed: int
    model: nn.Module
    history: list[dict]
    best_epoch: int


@dataclass
class _Run:
    """Everything one training run updates."""

    method: MethodConfig
    student: HSCMAE
    teacher: nn.ModuleDict | None
    weights: losses.UncertaintyWeights
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    steps_per_epoch: int

    def modules(self) -> dict[str, nn.Module]:
        found = {"student": self.student, "loss_weights": self.weights}
        return found if self.teacher is None else {**found, "teacher": self.teacher}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


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


def _student_view(run: _Run, batch: dict[str, Tensor], clean: dict[str, Tensor]) -> tuple[dict, dict]:
    """The student's masked standardised view ``[B, D]`` and its reconstruction mask ``[B, D]`` per modality."""
    cfg = run.method.loss
    if cfg.mask_ratio == 0:
        return clean, {m: None for m in MODALITIES}
    view, mask = {}, {}
    for m in MODALITIES:
        if cfg.mask_mode == "element":
            view[m], mask[m] = mask_elements(clean[m], ratio=cfg.mask_ratio, generator=run.generator)
        else:
            pooled, lost = mask_seconds(batch[f"{m}_seq"], batch[f"{m}_valid"], ratio=cfg.mask_ratio,
                                        generator=run.generator)
            view[m] = run.student.standardize({**batch, m: pooled})[m]
            mask[m] = lost.unsqueeze(1).expand_as(view[m])
    return view, mask


def teacher_space(run: _Run, clean: dict[str, Tensor]) -> tuple[dict[str, Tensor], losses.CanonicalMap]:
    """The EMA teacher's CCA path: its latents of the clean standardised batch, mapped by a linear CCA
    fitted on them into its canonical space (``[B, K]`` per modality), and that map."""
    with torch.no_grad():
        latent = {m: run.teacher[m](clean[m]) for m in MODALITIES}
    return losses.teacher_canonical(latent, ridge=run.method.loss.cca_ridge)


def step_losses(run: _Run, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each active loss term on one batch of raw pooled features ``batch[m]: [B, D]``.

    Deep CCA sees the student's latents of the clean inputs; the local InfoNCE, reconstruction and
    distillation terms see the latents of the masked view; the teacher always sees clean inputs, and
    its canonical space supplies the soft positives and the distillation targets.
    """
    cfg = run.method.loss
    clean = run.student.standardize(batch)
    view, mask = _student_view(run, batch, clean)
    latent = run.student.forward_encoder(view)
    teacher, cmap = teacher_space(run, clean) if run.teacher is not None else (None, None)
    out: dict[str, Tensor] = {}
    if cfg.use_global:
        # Deep CCA on the clean inputs (the student's view is clean already when nothing is masked).
        z = latent if view is clean else run.student.forward_encoder(clean)
        out["global"] = losses.cca_loss(z["audio"], z["visual"], k=cfg.cca_k, ridge=cfg.cca_ridge)
    if cfg.use_local:
        targets = (losses.soft_targets(teacher, topk=cfg.topk, temperature=cfg.teacher_temperature,
                                       self_weight=cfg.self_weight)
                   if cfg.topk > 0 else torch.eye(len(batch["audio"]), device=batch["audio"].device))
        out["local"] = losses.multi_positive_infonce(latent["audio"], latent["visual"], targets,
                                                     temperature=cfg.nce_temperature)
    if cfg.use_recon:
        recon = run.student.forward_decoder(latent)
        terms = [losses.reconstruction_loss(recon[m], clean[m], mask[m] if cfg.recon_target == "masked" else None)
                 for m in MODALITIES]
        out["recon"] = sum(terms) / len(terms)
    if cfg.use_distill:
        out["distill"] = losses.distill_loss(cmap(latent), teacher)
    return out


def _check_finite(values: dict[str, Tensor], *, method: str, epoch: int, step: int) -> None:
    stacked = torch.stack([v.detach().double() for v in values.values()])
    if not torch.isfinite(stacked).all():
        name, value = next((n, float(v)) for n, v in zip(values, stacked) if not math.isfinite(float(v)))
        raise FloatingPointError(f"{method}: {name} is {value} at epoch {epoch}, step {step}; training stopped")


def train_one_epoch(run: _Run, data: dict[str, Tensor], *, epoch: int, step: int) -> dict[str, float | dict]:
    """One shuffled pass; returns the mean of each loss term and of the total, and ``grad_share``
    (:func:`hscmae.diagnostics.gradient_shares` of the weighted terms on the epoch's first batch)."""
    cfg, tc = run.method.loss, run.method.train
    total_steps = tc.epochs * run.steps_per_epoch
    learn = cfg.learn_weights and epoch >= cfg.weight_warmup_epochs
    offsets = {"global": 1.0}  # makes -mean(corr) + 1 >= 0
    run.student.train()
    n = len(data["audio"])
    order = torch.randperm(n, generator=run.generator).to(data["audio"].device)
    size = min(tc.batch_size, n)
    sums: dict[str, float] = {}
    shares: dict[str, float] = {}
    for i in range(run.steps_per_epoch):
        idx = order[i * size:(i + 1) * size]
        factor = lr_factor(step, warmup_steps=tc.warmup_epochs * run.steps_per_epoch, total_steps=total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        terms = step_losses(run, {k: v[idx] for k, v in data.items()})
        total = run.weights(terms, offsets=offsets, learn=learn)
        if i == 0:  # once per epoch, on its first batch
            weight = run.weights.weights()
            weighted = {name: value * (weight[name] if learn else 1.0) for name, value in terms.items()}
            shares = diagnostics.gradient_shares(weighted, list(run.student.encoders.parameters()))
        run.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = nn.utils.clip_grad_norm_(run.student.parameters(), tc.grad_clip)
        _check_finite({**terms, "total loss": total, "gradient norm": grad_norm},
                      method=run.method.name, epoch=epoch, step=step)
        run.optimizer.step()
        if run.teacher is not None:
            momentum = ema_momentum(step, total_steps=total_steps, start=tc.ema_start, end=tc.ema_end)
            ema_update(run.teacher, run.student.encoders, momentum)
        for name, value in {**terms, "total": total}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        step += 1
    return {**{k: v / run.steps_per_epoch for k, v in sums.items()}, "grad_share": shares}


@torch.no_grad()
def epoch_diagnostics(run: _Run, data: dict[str, Tensor], train_sample: ClipArrays,
                      val_embedding: tuple[np.ndarray, np.ndarray]) -> dict[str, float | list[float]]:
    """Soft-positive purity on one training batch (teacher canonical space vs raw-input neighbours)
    and the validation canonical correlations (CCA fit on ``train_sample``'s latents)."""
    cfg = run.method.loss
    g = torch.Generator().manual_seed(0)  # the same clips every epoch; leaves the run's generator alone
    n = len(data["audio"])
    idx = torch.randperm(n, generator=g)[:min(run.method.train.batch_size, n)].to(data["audio"].device)
    batch = {k: v[idx] for k, v in data.items() if k in (*MODALITIES, "label")}
    clean = run.student.standardize(batch)
    topk = cfg.topk or LossConfig.topk  # methods without soft positives (topk=0) are rated at the default k
    figures = {"purity_raw": diagnostics.positive_purity(
        losses.soft_targets(clean, topk=topk, temperature=cfg.teacher_temperature, self_weight=0.0), batch["label"])}
    if run.teacher is not None:
        canonical, _ = teacher_space(run, clean)
        figures["purity_teacher"] = diagnostics.positive_purity(
            losses.soft_targets(canonical, topk=topk, temperature=cfg.teacher_temperature, self_weight=0.0),
            batch["label"])
    figures["val_canonical_corr"] = diagnostics.validation_correlations(
        embed(run.student, train_sample), val_embedding, ridge=cfg.cca_ridge)
    return figures


@torch.no_grad()
def fit_cca_projection(model: HSCMAE, train: ClipArrays, *, ridge: float) -> None:
    """Install a linear CCA of the clean training latents as ``model``'s output map.

    Without the local (InfoNCE) term nothing ties the two modalities' latent coordinates together:
    deep CCA is blind to any invertible linear map of either side. Its learned latents are
    compared after linear CCA (Andrew et al. 2013), fitted here on the training clips with
    :func:`hscmae.cca.fit_cca_tensors` (relative ridge, variates scaled by their correlations, as the
    post-hoc column and the ``linear-cca`` baseline).
    """
    model.set_output_projection(None)
    audio, visual = embed(model, train)
    fitted = fit_cca_tensors(audio, visual, k=model.config.latent, ridges=[ridge])[0]
    cmap = losses.CanonicalMap.from_cca(fitted, dtype=torch.float32)
    model.set_output_projection(center=cmap.mean, matrix=cmap.matrix)


@torch.no_grad()
def embed(model: HSCMAE, data: ClipArrays, *, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Embed clean inputs: ``(audio [N, L], visual [N, L])`` float32 latents (not normalised)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pooled = dict(zip(MODALITIES, data.pooled()))
    chunks: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    for start in range(0, len(data), batch_size):
        raw = {m: torch.from_numpy(pooled[m][start:start + batch_size]).to(device) for m in MODALITIES}
        for m, z in model.embed(raw).items():
            chunks[m].append(z.float().cpu().numpy())
    model.train(was_training)
    return tuple(np.concatenate(chunks[m]) for m in MODALITIES)


def _warn_degenerate_cca(method: MethodConfig, batch: int) -> None:
    """A CCA within a batch no larger than twice the latent size measures nothing: say which level it hurts."""
    forced = losses.forced_unit_correlations(batch, method.model.latent)
    hurt = [name for name, on in (("the global term", method.loss.use_global),
                                  ("the teacher's canonical space", method.loss.needs_teacher)) if on]
    if hurt and forced:
        verb = "hold" if len(hurt) > 1 else "holds"
        warnings.warn(f"{method.name}: CCA within batches of {batch} clips of {method.model.latent}-d latents is "
                      f"degenerate: {forced} canonical correlations are 1 for any data, so {' and '.join(hurt)} "
                      f"{verb} chance correlation, not signal (use batches of more than {2 * method.model.latent} "
                      "clips)", stacklevel=3)


def _build(method: MethodConfig, train: ClipArrays, *, seed: int, device: torch.device) -> _Run:
    torch.manual_seed(seed)
    _warn_degenerate_cca(method, min(method.train.batch_size, len(train)))
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
    return _Run(method=method, student=student, teacher=teacher, weights=weights, optimizer=optimizer,
                generator=torch.Generator().manual_seed(seed),
                steps_per_epoch=max(1, len(train) // tc.batch_size))


def fit(method: MethodConfig, train: ClipArrays, val: ClipArrays, *, seed: int, scorer: Scorer,
        checkpoint_dir: Path | None = None, progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``method`` on ``train``, select the epoch whose student scores best on ``val``.

    Args:
        method: a ``kind="trainable"`` method config.
        train, val: clips; val is only embedded (clean) and scored.
        seed: seeds initialisation, data order, masking and dropout.
        scorer: ``(audio_emb [Nv, L], visual_emb [Nv, L], labels [Nv]) -> float``, higher is better.
        checkpoint_dir: where to checkpoint after each epoch and resume from; also gets ``best.safetensors``.
        progress: show a tqdm bar advancing per epoch.
        on_epoch: called with each epoch's history entry (``epoch``, losses, ``val_score``), e.g. to log it.
    """
    if method.kind != "trainable":
        raise ValueError(f"method {method.name!r} is {method.kind}, not trainable")
    train.check_finite("train")
    val.check_finite("val")
    device = resolve_device(method.train.device)
    run = _build(method, train, seed=seed, device=device)
    data = _tensors(train, time_mode=method.loss.mask_mode == "time", device=device)
    train_sample = train.subset(np.random.default_rng(0).permutation(len(train))[:DIAGNOSTIC_CLIPS])
    identity = {"method": method.to_dict(), "seed": seed, "train_clips": len(train), "dims": train.dims}
    state = {**identity, "epoch": 0, "step": 0, "history": [], "best_epoch": -1, "best_score": None}
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
    for epoch in range(state["epoch"], method.train.epochs):
        start = time.perf_counter()
        stats = train_one_epoch(run, data, epoch=epoch, step=state["step"])
        if not method.loss.use_local:
            fit_cca_projection(run.student, train, ridge=method.loss.cca_ridge)
        val_embedding = embed(run.student, val)
        score = float(scorer(*val_embedding, val.label_id))
        if not math.isfinite(score):
            raise FloatingPointError(f"{method.name}: scorer returned {score} on val at epoch {epoch}")
        stats.update(epoch_diagnostics(run, data, train_sample, val_embedding))
        state["step"] += run.steps_per_epoch
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch, **stats, "weights": run.weights.weights(), "val_score": score,
                                 "seconds": time.perf_counter() - start})
        if on_epoch is not None:
            on_epoch(state["history"][-1])
        if state["best_score"] is None or score > state["best_score"]:
            state["best_epoch"], state["best_score"] = epoch, score
            best_state = {k: v.detach().clone() for k, v in run.student.state_dict().items()}
            if checkpoint_dir is not None:
                save_module(checkpoint_dir / BEST, run.student,
                            {"method": method.name, "seed": str(seed), "epoch": str(epoch), "val_score": str(score)})
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, epoch=epoch + 1, modules=run.modules(), optimizer=run.optimizer,
                            rng={"torch": torch.get_rng_state(), "generator": run.generator.get_state()}, state=state)
        bar.set_postfix(loss=f"{stats['total']:.3f}", val=f"{score:.4f}")
        bar.update(1)
    bar.close()
    if best_state is not None:
        run.student.load_state_dict(best_state)
    elif checkpoint_dir is not None and state["best_epoch"] >= 0:
        load_module(checkpoint_dir / BEST, run.student)
    run.student.eval()
    return TrainResult(method=method.name, seed=seed, model=run.student, history=state["history"],
                       best_epoch=state["best_epoch"])
