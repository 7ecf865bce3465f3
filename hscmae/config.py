"""Typed configs for HSC-MAE and its baselines; every default lives here.

A :class:`MethodConfig` names one method of the results table. ``kind="trainable"`` methods are
trained by :func:`hscmae.train.fit`; ``kind="closed_form"`` ones (linear CCA) are solved elsewhere.
Configs round-trip through plain dicts (``to_dict`` / ``from_dict``) for JSON files and flow parameters.
:class:`ExperimentConfig` gathers the data, methods, seeds and overrides of one experiment, and
:func:`load_config` reads it from a file with every key checked (light: no torch, so command lines
answer bad configs at once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hscmae.synthetic import SyntheticConfig
from pipeline.io.errors import UserError

LOSS_TERMS = ("global", "local", "recon", "distill")
MASK_MODES = ("element", "time")
RECON_TARGETS = ("masked", "full")
KINDS = ("trainable", "closed_form")


@dataclass
class ModelConfig:
    """Per-modality MLP encoders ``D -> hidden (x depth) -> latent`` and decoders ``latent -> hidden (x depth) -> D``.

    Defaults are sized like the authors' released encoders (1,024 wide, two hidden layers) for real
    features; :data:`MODEL_PRESETS` ``"demo"`` is a small one for the built-in and demo sets.
    """

    hidden: int = 1024
    depth: int = 2
    latent: int = 32
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden", "depth", "latent"):
            if getattr(self, name) < 1:
                raise ValueError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model dropout must be in [0, 1), got {self.dropout}")


# Named model sizes: "paper" = the authors' encoder width (real features); "demo" = one hidden layer
# of 128, small enough that ten methods x three seeds on the built-in sets train in minutes on 2 cores.
MODEL_PRESETS = {"paper": ModelConfig(), "demo": ModelConfig(hidden=128, depth=1)}


@dataclass
class LossConfig:
    """Which alignment levels are on, and their settings.

    ``cca_k=None`` averages all ``latent`` canonical correlations (the deep-CCA loss is minus their
    mean, in [-1, 0]). ``cca_ridge`` is relative to the mean variance (the convention of
    :mod:`hscmae.cca`). ``topk=0`` makes the local loss plain symmetric InfoNCE (own pair only, no
    teacher). ``mask_ratio=0`` feeds the student clean inputs. ``mask_mode="time"`` (default) drops
    whole seconds; ``"element"`` zeroes entries and rescales the rest by ``1 / (1 - mask_ratio)``.
    """

    use_global: bool = True
    use_local: bool = True
    use_recon: bool = True
    use_distill: bool = False
    cca_k: int | None = None
    cca_ridge: float = 1e-3
    topk: int = 5
    teacher_temperature: float = 0.05
    nce_temperature: float = 0.07
    self_weight: float = 1.0
    mask_ratio: float = 0.3
    mask_mode: str = "time"
    recon_target: str = "masked"
    learn_weights: bool = True
    weight_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode {self.mask_mode!r} is not one of {MASK_MODES}")
        if self.recon_target not in RECON_TARGETS:
            raise ValueError(f"recon_target {self.recon_target!r} is not one of {RECON_TARGETS}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.topk < 0 or self.self_weight < 0 or (self.topk == 0 and self.self_weight == 0):
            raise ValueError(f"local loss needs topk >= 0, self_weight >= 0 and one of them > 0 "
                             f"(topk={self.topk}, self_weight={self.self_weight})")
        if self.use_recon and self.mask_ratio == 0 and self.recon_target == "masked":
            raise ValueError("recon_target 'masked' needs mask_ratio > 0 (or use recon_target 'full')")
        if self.cca_k is not None and self.cca_k < 1:
            raise ValueError(f"cca_k must be None (all) or >= 1, got {self.cca_k}")
        if self.cca_ridge <= 0:
            raise ValueError(f"cca_ridge must be > 0, got {self.cca_ridge}")

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the loss terms that are switched on, in :data:`LOSS_TERMS` order."""
        flags = (self.use_global, self.use_local, self.use_recon, self.use_distill)
        return tuple(name for name, on in zip(LOSS_TERMS, flags) if on)

    @property
    def needs_teacher(self) -> bool:
        """The EMA teacher is built only when soft positives or distillation use it."""
        return (self.use_local and self.topk > 0) or self.use_distill


@dataclass
class TrainConfig:
    """Optimiser, schedule and EMA settings. ``device="auto"`` picks CUDA when available."""

    lr: float = 3e-4
    # Learning rate of the uncertainty log-variances (no weight decay). High enough that each
    # s_i = log(variance) can travel to its optimum log(L_i) (a few units) within the default budget
    # even on sets with two steps per epoch (80 steps): Adam moves each by about lr per step.
    weights_lr: float = 5e-2
    weight_decay: float = 1e-4
    batch_size: int = 512
    epochs: int = 40
    warmup_epochs: int = 2
    grad_clip: float = 1.0
    ema_start: float = 0.95
    ema_end: float = 0.999
    device: str = "auto"


@dataclass
class MethodConfig:
    """One method of the results table."""

    name: str
    kind: str = "trainable"
    cca_dim: int = 32  # dimension of a closed-form (linear-cca) method; trainable ones use model.latent
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "trainable" and not self.loss.active:
            raise ValueError(f"method {self.name!r}: no loss term is switched on")
        if self.cca_dim < 1:
            raise ValueError(f"method {self.name!r}: cca_dim must be >= 1, got {self.cca_dim}")

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        top = _checked(cls, data, "method")
        for key, part in _PARTS.items():
            if key in top:
                top[key] = part(**_checked(part, top[key], key))
        return cls(**top)

    def updated(self, changes: dict[str, Any]) -> MethodConfig:
        """A copy with ``changes`` applied: top-level fields, and ``model``/``loss``/``train`` dicts merged
        field by field; unknown keys raise ``ValueError`` naming them."""
        top = _checked(MethodConfig, changes, f"method {self.name!r}")
        for key, value in top.items():
            if key in _PARTS:
                top[key] = dataclasses.replace(getattr(self, key), **_checked(_PARTS[key], value, f"{self.name}.{key}"))
        return dataclasses.replace(self, **top)


def _checked(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` as a dict of ``cls``'s fields; anything else raises ``ValueError`` naming ``where``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} config: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where} config: unknown keys {unknown} (known: {sorted(names)})")
    return dict(data)


_PARTS = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig}


def _variant(base: MethodConfig, name: str, **loss_changes: Any) -> MethodConfig:
    return dataclasses.replace(base, name=name, loss=dataclasses.replace(base.loss, **loss_changes))


def methods() -> dict[str, MethodConfig]:
    """HSC-MAE, its one-flag ablations, and the baselines, by name."""
    base = MethodConfig(name="hscmae")
    own_pair_only = dict(topk=0, self_weight=1.0, learn_weights=False)
    variants = [
        base,
        _variant(base, "hscmae-no-global", use_global=False),
        _variant(base, "hscmae-no-local", use_local=False),
        _variant(base, "hscmae-no-recon", use_recon=False),
        _variant(base, "hscmae-fixed-weights", learn_weights=False),
        _variant(base, "hscmae+distill", use_distill=True),
        _variant(base, "dcca", use_local=False, use_recon=False, mask_ratio=0.0, learn_weights=False),
        _variant(base, "clip", use_global=False, use_recon=False, mask_ratio=0.0, **own_pair_only),
        _variant(base, "cav-mae", use_global=False, **own_pair_only),
        dataclasses.replace(base, name="linear-cca", kind="closed_form"),
    ]
    return {m.name: m for m in variants}


@dataclass
class ExperimentConfig:
    """Everything that decides an experiment; defaults run the built-in synthetic demo.

    Args:
        shards: a folder (or file) of feature shards; ``None`` uses the built-in synthetic set.
        synthetic: the synthetic set to generate when ``shards`` is ``None``.
        data_root: where generated shards are written (``synthetic-<hash>/``).
        methods: names from :func:`hscmae.config.methods` (default: all).
        seeds: one run per method and seed.
        val_fraction, split_seed: val carved from train (stratified) when the data have no val split.
        posthoc_cca: also report metrics after linear CCA fit on the TRAIN embeddings.
        model_preset: a name from :data:`hscmae.config.MODEL_PRESETS` for every trainable method's
            encoders; ``"auto"``: ``"demo"`` for the built-in synthetic set, ``"paper"`` otherwise.
        model: fields of :class:`hscmae.config.ModelConfig` set on top of the preset, for every method.
        method_configs: per method name, changes to its config (``{"hscmae": {"loss": {"topk": 10}}}``).
        epochs, batch_size: override every trainable method's settings (quick runs); ``None`` keeps theirs.
        runs_root, run_dir: the run goes to ``run_dir``, or ``runs_root/<hash of this config>``.
    """

    shards: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    data_root: str = "data"
    methods: list[str] = field(default_factory=lambda: list(methods()))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    val_fraction: float = 0.1
    split_seed: int = 0
    posthoc_cca: bool = True
    model_preset: str = "auto"
    model: dict[str, Any] = field(default_factory=dict)
    method_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    runs_root: str = "runs"
    run_dir: str | None = None

    def __post_init__(self) -> None:
        known = methods()
        unknown = [m for m in self.methods if m not in known]
        if unknown or not self.methods:
            raise ValueError(f"unknown or no methods {unknown}; known: {sorted(known)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.model_preset == "auto":  # resolved once, so it survives shards being filled in later
            self.model_preset = "demo" if self.shards is None else "paper"
        if self.model_preset not in MODEL_PRESETS:
            raise ValueError(f"model_preset {self.model_preset!r} is not 'auto' or one of {sorted(MODEL_PRESETS)}")
        unknown = sorted(set(self.method_configs) - set(known))
        if unknown:
            raise ValueError(f"method_configs: unknown methods {unknown}; known: {sorted(known)}")
        for name in self.methods:  # every override is checked now, not when the method runs
            self.method_config(name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        data = _checked(cls, data, "experiment")
        if isinstance(data.get("synthetic"), dict):
            data["synthetic"] = SyntheticConfig(**_checked(SyntheticConfig, data["synthetic"], "synthetic"))
        return cls(**data)

    def resolved(self) -> dict[str, Any]:
        """The experiment's fields and every method's resolved config, as written to ``config.json``."""
        return {"experiment": self.to_dict(), "methods": {m: self.method_config(m).to_dict() for m in self.methods}}

    def method_config(self, name: str) -> MethodConfig:
        """The resolved config of method ``name``: model preset and ``model`` fields, then its
        ``method_configs`` entry, then the ``epochs``/``batch_size`` overrides."""
        preset = dataclasses.asdict(MODEL_PRESETS[self.model_preset])
        method = methods()[name].updated({"model": {**preset, **self.model}})
        method = method.updated(self.method_configs.get(name, {}))
        changes = {k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size)) if v is not None}
        return method.updated({"train": changes})

    def resolved_run_dir(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        text = json.dumps({k: v for k, v in self.to_dict().items() if k not in ("run_dir", "runs_root")}, sort_keys=True)
        return Path(self.runs_root) / f"run-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def load_config(path: Path | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a JSON or YAML file (optional), with non-``None`` ``overrides`` on top.

    Raises :class:`pipeline.io.errors.UserError` starting with the file name (or "command line") for
    unreadable files, bad YAML/JSON (:func:`pipeline.io.config_file.read_config_file`), unknown keys (named)
    and invalid values.
    """
    from pipeline.io.config_file import read_config_file

    data = read_config_file(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path or 'command line'}: {' '.join(str(exc).split())}") from exc
