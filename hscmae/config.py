"""Typed configs for HSC-MAE and its baselines: every default, bound, choice and description is declared here.

Each config is a pydantic dataclass whose fields declare their bounds and choices (``Field``,
``Literal``) and a description once. Everything else derives from that declaration: the Prefect run
form of ``flows.train_eval`` (its JSON schema), the checks of a config file and of the command line
(:func:`load_config`), and Python callers (a bad value raises ``ValueError``, a pydantic
``ValidationError`` naming the field). Checks that tie several fields together are ``__post_init__``.

A :class:`MethodConfig` names one method of the results table. ``kind="trainable"`` methods are
trained by :func:`hscmae.train.fit`; ``kind="closed_form"`` ones (linear CCA) are solved elsewhere.
``LossConfig.mask_mode="auto"`` is resolved once the data are known (:meth:`MethodConfig.for_input`).
:class:`ExperimentConfig` gathers the data, methods, seeds and changes of one experiment; its
per-method changes are typed too (:data:`ModelChanges`, :data:`MethodChanges`: the same fields,
each optional, empty keeping the method's own value). Configs round-trip through plain dicts
(``to_dict`` / ``from_dict``) for JSON files. This module is light (no torch), so command lines
answer a bad config at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from hscmae.synthetic import SyntheticConfig
from pipeline.io.errors import UserError

LOSS_TERMS = ("global", "local", "recon", "distill")
MaskMode = Literal["auto", "element", "time"]
ReconTarget = Literal["masked", "full"]
Kind = Literal["trainable", "closed_form"]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
PATIENCE = 15  # TrainConfig.patience's default, chosen from val curves (docs/protocol.md, "Early stopping")
STRICT = ConfigDict(extra="forbid")  # an unknown key is an error that names it


@dataclass(config=STRICT)
class ModelConfig:
    """Per-modality MLP encoders ``D -> hidden (x depth) -> latent`` and decoders ``latent -> hidden (x depth) -> D``.

    Defaults are sized like the authors' released encoders (1,024 wide, two hidden layers) for real
    features; :data:`MODEL_PRESETS` ``"demo"`` is a small one for the built-in and demo sets.
    """

    hidden: Annotated[int, Field(ge=1, description="width of each hidden layer")] = 1024
    depth: Annotated[int, Field(ge=1, description="hidden layers of each encoder and decoder")] = 2
    latent: Annotated[int, Field(ge=1, description="size of the latent (the embedding)")] = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, description="dropout after each hidden layer")] = 0.1


# Named model sizes: "paper" = the authors' encoder width (real features); "demo" = one hidden layer
# of 128, small enough that ten methods x three seeds on the built-in sets train in minutes on 2 cores.
MODEL_PRESETS = {"paper": ModelConfig(), "demo": ModelConfig(hidden=128, depth=1)}


@dataclass(config=STRICT)
class LossConfig:
    """Which alignment levels are on, and their settings (see :mod:`hscmae.losses` and :mod:`hscmae.model`)."""

    use_global: Annotated[bool, Field(description="global level: deep CCA of the clean-input latents")] = True
    use_local: Annotated[bool, Field(description="local level: multi-positive InfoNCE of the masked view")] = True
    use_recon: Annotated[bool, Field(description="sample level: reconstruction of the clean input")] = True
    use_distill: Annotated[bool, Field(description="distillation towards the teacher's canonical variates")] = False
    cca_k: Annotated[int | None, Field(ge=1, description="canonical correlations averaged by deep CCA; "
                                                         "empty: all latent ones (the loss is in [-1, 0])")] = None
    cca_ridge: Annotated[float, Field(gt=0.0, description="CCA ridge, relative to the mean variance "
                                                          "(the convention of hscmae.cca)")] = 1e-3
    topk: Annotated[int, Field(ge=0, description="teacher neighbours taken as extra positives; "
                                                 "0: plain symmetric InfoNCE, no teacher")] = 5
    teacher_temperature: Annotated[float, Field(gt=0.0, description="softmax temperature of the soft "
                                                                     "positives' weights")] = 0.05
    nce_temperature: Annotated[float, Field(gt=0.0, description="InfoNCE temperature")] = 0.07
    self_weight: Annotated[float, Field(ge=0.0, description="weight of the own pair among the positives")] = 1.0
    mask_ratio: Annotated[float, Field(ge=0.0, lt=1.0, description="share of each clip's seconds (time) or "
                                                                   "entries (element) masked; 0: clean inputs")] = 0.3
    mask_mode: Annotated[MaskMode, Field(description="time: drop whole seconds from the pooled mean; element: "
                                                     "zero entries of the pooled vector and rescale the rest by "
                                                     "1/(1-ratio); auto: element on clip-level features (one "
                                                     "second per clip), else time")] = "auto"
    recon_target: Annotated[ReconTarget, Field(description="reconstruction error over the masked entries or "
                                                           "the full vector")] = "masked"
    learn_weights: Annotated[bool, Field(description="learn the loss weights (homoscedastic uncertainty)")] = True
    weight_warmup_epochs: Annotated[int, Field(ge=0, description="epochs with the loss weights held at 1")] = 0

    def __post_init__(self) -> None:
        if self.topk == 0 and self.self_weight == 0:
            raise ValueError(f"local loss needs topk > 0 or self_weight > 0 (topk={self.topk}, "
                             f"self_weight={self.self_weight})")
        if self.use_recon and self.mask_ratio == 0 and self.recon_target == "masked":
            raise ValueError("recon_target 'masked' needs mask_ratio > 0 (or use recon_target 'full')")

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the loss terms that are switched on, in :data:`LOSS_TERMS` order."""
        flags = (self.use_global, self.use_local, self.use_recon, self.use_distill)
        return tuple(name for name, on in zip(LOSS_TERMS, flags) if on)

    @property
    def needs_teacher(self) -> bool:
        """The EMA teacher is built only when soft positives or distillation use it."""
        return (self.use_local and self.topk > 0) or self.use_distill


@dataclass(config=STRICT)
class TrainConfig:
    """Optimiser, schedule and EMA settings."""

    lr: Annotated[float, Field(gt=0.0, description="peak learning rate of the networks (AdamW)")] = 3e-4
    # High enough that each s_i = log(variance) can travel to its optimum log(L_i) (a few units) within
    # the default budget even on sets with two steps per epoch (80 steps): Adam moves each by about lr per step.
    weights_lr: Annotated[float, Field(gt=0.0, description="learning rate of the loss weights' log-variances "
                                                           "(no weight decay)")] = 5e-2
    weight_decay: Annotated[float, Field(ge=0.0, description="AdamW weight decay of the networks")] = 1e-4
    batch_size: Annotated[int, Field(ge=1, le=65536, description="clips per step")] = 512
    epochs: Annotated[int, Field(ge=1, le=10000, description="most passes over the training clips (early "
                                                             "stopping may end training sooner: patience)")] = 40
    patience: Annotated[int, Field(ge=1, le=10000, description="epochs without a better val score after which "
                                                               "training stops; at least epochs: never stops "
                                                               "early")] = PATIENCE
    warmup_epochs: Annotated[int, Field(ge=0, description="epochs of linear learning-rate warm-up")] = 2
    grad_clip: Annotated[float, Field(gt=0.0, description="largest gradient norm of the networks")] = 1.0
    ema_start: Annotated[float, Field(ge=0.0, le=1.0, description="teacher momentum at the first step")] = 0.95
    ema_end: Annotated[float, Field(ge=0.0, le=1.0, description="teacher momentum at the last step")] = 0.999
    device: Annotated[str, Field(min_length=1, description="torch device; auto: cuda when available")] = "auto"


@dataclass(config=STRICT)
class MethodConfig:
    """One method of the results table."""

    name: Annotated[str, Field(min_length=1, description="the method's name in the tables")]
    kind: Annotated[Kind, Field(description="trainable (hscmae.train.fit) or closed_form (linear CCA)")] = "trainable"
    cca_dim: Annotated[int, Field(ge=1, description="dimension of a closed-form (linear-cca) method; "
                                                    "trainable ones use model.latent")] = 32
    cca_ridge: Annotated[float | None, Field(gt=0.0, description="ridge of a closed-form (linear-cca) method, "
                                                                 "relative to the mean variance; empty: the "
                                                                 "one of hscmae.evaluate.CCA_RIDGES best on "
                                                                 "val")] = None
    model: Annotated[ModelConfig, Field(description="encoder and decoder sizes")] = field(default_factory=ModelConfig)
    loss: Annotated[LossConfig, Field(description="alignment levels and their settings")] = \
        field(default_factory=LossConfig)
    train: Annotated[TrainConfig, Field(description="optimiser, schedule and EMA")] = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.kind == "trainable" and not self.loss.active:
            raise ValueError(f"method {self.name!r}: no loss term is switched on")
        if self.kind == "trainable" and self.cca_ridge is not None:
            raise ValueError(f"method {self.name!r}: cca_ridge is the ridge of closed-form methods; a trainable "
                             "one's post-hoc CCA picks its ridge on val (its deep CCA: loss.cca_ridge)")

    def for_input(self, *, clip_level: bool) -> MethodConfig:
        """This method with ``loss.mask_mode="auto"`` resolved for its data: ``"element"`` (entries of the pooled
        vector) when ``clip_level`` (some modality has one second in every clip, so dropping seconds could
        not mask it), else ``"time"``; an explicit mode is kept."""
        if self.loss.mask_mode != "auto":
            return self
        return self.updated({"loss": {"mask_mode": "element" if clip_level else "time"}})

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Inverse of :meth:`to_dict`; unknown keys and bad values raise ``ValueError`` naming them."""
        return TypeAdapter(cls).validate_python(data)

    def updated(self, changes: dict[str, Any] | MethodChanges) -> MethodConfig:
        """A copy with ``changes`` (a :data:`MethodChanges` or its dict) applied, ``model``/``loss``/``train``
        merged field by field; unknown keys and bad values raise ``ValueError`` naming them."""
        top = changes_dict(TypeAdapter(MethodChanges).validate_python(changes))
        for key, value in top.items():
            if key in _PARTS:
                top[key] = dataclasses.replace(getattr(self, key), **value)
        return dataclasses.replace(self, **top)


_PARTS = ("model", "loss", "train")


def optional(config: type, name: str) -> Any:
    """The type of ``config``'s field ``name`` with ``None`` allowed, its bounds, choices and description kept."""
    info = config.__pydantic_fields__[name]
    return Annotated[info.annotation | None, *info.metadata, Field(description=info.description)]


def _changes_of(config: type, *, skip: tuple[str, ...] = ()) -> type:
    """A pydantic dataclass with ``config``'s fields (less ``skip``), each :func:`optional` with ``None`` (keep)
    as its default; a part config (model, loss, train) becomes its changes."""
    fields = []
    for name, info in config.__pydantic_fields__.items():
        if name in skip:
            continue
        part = _CHANGES.get(info.annotation)
        if part is not None:
            fields.append((name, Annotated[part, Field(description=info.description)], field(default_factory=part)))
        else:
            fields.append((name, optional(config, name), field(default=None)))
    made = dataclasses.make_dataclass(config.__name__.replace("Config", "Changes"), fields)
    made.__doc__ = f"Changes to a :class:`{config.__name__}`: each field optional, empty keeps the value it changes."
    made.__module__ = __name__
    return dataclass(made, config=STRICT)


_CHANGES: dict[type, type] = {}
ModelChanges = _CHANGES[ModelConfig] = _changes_of(ModelConfig)
LossChanges = _CHANGES[LossConfig] = _changes_of(LossConfig)
TrainChanges = _CHANGES[TrainConfig] = _changes_of(TrainConfig)
MethodChanges = _changes_of(MethodConfig, skip=("name", "kind"))


def changes_dict(changes: Any) -> dict[str, Any]:
    """The fields a changes object sets, as a plain dict (``None`` and empty part changes left out)."""
    out = {}
    for f in dataclasses.fields(changes):
        value = getattr(changes, f.name)
        if dataclasses.is_dataclass(value):
            value = changes_dict(value) or None
        if value is not None:
            out[f.name] = value
    return out


def _variant(base: MethodConfig, name: str, **loss_changes: Any) -> MethodConfig:
    return dataclasses.replace(base, name=name, loss=dataclasses.replace(base.loss, **loss_changes))


def methods() -> dict[str, MethodConfig]:
    """HSC-MAE, its ablations, and the baselines, by name.

    Each ``hscmae-no-*`` row removes what its name says: one level (global, local), the reconstruction
    decoder alone (``-no-recon-decoder``: the student still sees the masked view), or the whole sample
    level (``-no-sample``: clean inputs, no reconstruction).
    """
    base = MethodConfig(name="hscmae")
    own_pair_only = dict(topk=0, self_weight=1.0, learn_weights=False)
    variants = [
        base,
        _variant(base, "hscmae-no-global", use_global=False),
        _variant(base, "hscmae-no-local", use_local=False),
        _variant(base, "hscmae-no-recon-decoder", use_recon=False),  # masked view kept, no decoder
        _variant(base, "hscmae-no-sample", use_recon=False, mask_ratio=0.0),  # no masking, no reconstruction
        _variant(base, "hscmae-fixed-weights", learn_weights=False),
        _variant(base, "hscmae+distill", use_distill=True),
        _variant(base, "dcca", use_local=False, use_recon=False, mask_ratio=0.0, learn_weights=False),
        _variant(base, "clip", use_global=False, use_recon=False, mask_ratio=0.0, **own_pair_only),
        _variant(base, "cav-mae", use_global=False, **own_pair_only),
        dataclasses.replace(base, name="linear-cca", kind="closed_form"),
    ]
    return {m.name: m for m in variants}


MethodName = Literal[tuple(methods())]  # type: ignore[valid-type]  # the registry's names, as choices
PresetName = Literal[("auto", *MODEL_PRESETS)]  # type: ignore[valid-type]
EpochsOverride = optional(TrainConfig, "epochs")  # TrainConfig's bounds, for the experiment-wide override
BatchSizeOverride = optional(TrainConfig, "batch_size")
PatienceOverride = optional(TrainConfig, "patience")
OVERRIDES = ("epochs", "batch_size", "patience")  # ExperimentConfig fields set on every trainable method's train


@dataclass(config=STRICT)
class TuningNote:
    """Where a config's method settings came from: the ``tune`` flow writes it into ``tuned.yaml``; tables say it."""

    trials_per_method: Annotated[int, Field(ge=1, description="finished trials of each method's study")]
    storage: Annotated[str, Field(min_length=1, description="the Optuna storage URL that holds the studies")]
    studies: Annotated[dict[str, str], Field(description="each tuned method's study name")] = \
        field(default_factory=dict)
    best_val_score: Annotated[dict[str, float], Field(description="each tuned method's best val mean mAP")] = \
        field(default_factory=dict)


@dataclass(config=STRICT)
class ExperimentConfig:
    """Everything that decides an experiment; defaults run the built-in synthetic demo.

    It is also the run form of ``flows.train_eval``, where relative folders are under the output root.
    """

    shards: Annotated[str | None, Field(description="feature shards (a folder or file); "
                                                    "empty: the built-in synthetic set")] = None
    synthetic: Annotated[SyntheticConfig, Field(description="the generated set, when shards is empty")] = \
        field(default_factory=SyntheticConfig)
    data_root: Annotated[str, Field(min_length=1, description="where generated shards go "
                                                              "(synthetic-HASH/)")] = "data"
    methods: Annotated[list[MethodName], Field(min_length=1, description="methods to train and evaluate")] = \
        field(default_factory=lambda: list(methods()))
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=100, description="one run per method and seed")] = \
        field(default_factory=lambda: [0, 1, 2])
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0, description="train share carved (stratified) into val "
                                                                     "when the data have no val split")] = 0.1
    split_seed: Annotated[Seed, Field(description="seed of the val carving")] = 0
    posthoc_cca: Annotated[bool, Field(description="also report metrics after linear CCA fit on the train "
                                                   "embeddings")] = True
    model_preset: Annotated[PresetName, Field(description="encoder sizes of every trainable method; auto: demo "
                                                          "for the built-in set, paper (1,024 wide) for real "
                                                          "shards")] = "auto"
    model: Annotated[ModelChanges, Field(description="model fields set on top of the preset, for every method")] = \
        field(default_factory=ModelChanges)
    method_configs: Annotated[dict[MethodName, MethodChanges], Field(
        description="per method: changes to its model, loss and train configs")] = field(default_factory=dict)
    epochs: Annotated[EpochsOverride, Field(description="override every trainable method's epochs")] = None
    batch_size: Annotated[BatchSizeOverride, Field(description="override every trainable method's batch size")] = None
    patience: Annotated[PatienceOverride, Field(description="override every trainable method's early-stopping "
                                                            "patience")] = None
    runs_root: Annotated[str, Field(min_length=1, description="where run folders go")] = "runs"
    run_dir: Annotated[str | None, Field(description="the run folder; empty: runs_root/run-HASH, HASH a hash of "
                                                     "the data, settings and code")] = None
    tuning: Annotated[TuningNote | None, Field(description="how method_configs were tuned (written by the tune "
                                                           "flow); empty: each method's default recipe")] = None

    def __post_init__(self) -> None:
        for name in self.methods:  # every method's resolved config is checked now, not when it runs
            try:
                self.method_config(name)
            except ValidationError as exc:
                raise ValueError(f"method {name!r}: {error_text(exc)}") from None

    @property
    def preset(self) -> str:
        """The model preset's name, ``"auto"`` resolved: ``"demo"`` for the built-in set, else ``"paper"``."""
        if self.model_preset != "auto":
            return self.model_preset
        return "demo" if self.shards is None else "paper"

    def with_shards(self, shards: str | Path) -> ExperimentConfig:
        """This experiment on ``shards`` (e.g. the generated set's folder), keeping the model preset it resolved."""
        return dataclasses.replace(self, shards=str(shards), model_preset=self.preset)

    def under(self, root: Path) -> ExperimentConfig:
        """This experiment with relative ``data_root``, ``runs_root`` and ``run_dir`` under ``root``."""
        paths = {name: str(root / value) for name in ("data_root", "runs_root", "run_dir")
                 if (value := getattr(self, name)) is not None}
        return dataclasses.replace(self, **paths)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict; changes hold only the fields they set."""
        data = dataclasses.asdict(self)
        data["model"] = changes_dict(self.model)
        data["method_configs"] = {name: changes_dict(c) for name, c in self.method_configs.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict`; unknown keys and bad values raise ``ValueError`` naming them."""
        return TypeAdapter(cls).validate_python(data)

    def resolved(self, *, clip_level: bool | None = None) -> dict[str, Any]:
        """The experiment's fields (``model_preset`` resolved) and every method's resolved config, as written to
        ``config.json``; with ``clip_level`` known (the data's, see :meth:`MethodConfig.for_input`) the
        ``"auto"`` mask modes are resolved too."""
        def method(name: str) -> MethodConfig:
            found = self.method_config(name)
            return found if clip_level is None else found.for_input(clip_level=clip_level)

        return {"experiment": {**self.to_dict(), "model_preset": self.preset},
                "methods": {m: method(m).to_dict() for m in self.methods}}

    def method_config(self, name: str) -> MethodConfig:
        """The resolved config of method ``name``: model preset and ``model`` fields, then its
        ``method_configs`` entry, then the ``epochs``/``batch_size``/``patience`` overrides."""
        preset = dataclasses.asdict(MODEL_PRESETS[self.preset])
        method = methods()[name].updated({"model": {**preset, **changes_dict(self.model)}})
        method = method.updated(self.method_configs.get(name, MethodChanges()))
        changes = {k: v for k in OVERRIDES if (v := getattr(self, k)) is not None}
        return method.updated({"train": changes})


def problems(exc: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """A config's problems as ``(field path, "field.path: problem, got value")`` pairs."""
    found = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            text = "unknown key"
        elif error["type"] == "value_error":
            text = str(error["ctx"]["error"])
        else:
            text = error["msg"]
            if isinstance(error["input"], (bool, int, float, str)):
                text += f", got {error['input']!r}"
        found.append((error["loc"], f"{where}: {text}" if where else text))
    return found


def error_text(exc: ValidationError) -> str:
    """A config's problems on one line: ``field.path: problem, got value``, joined by ``; ``."""
    return "; ".join(text for _, text in problems(exc))


def load_config(path: Path | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a JSON or YAML file (optional), with non-``None`` ``overrides`` on top.

    Raises :class:`pipeline.io.errors.UserError` for unreadable files and bad YAML/JSON
    (:func:`pipeline.io.config_file.read_config_file`), and for unknown keys and bad values, each named
    after where it came from: the file, or "command line" for an override.
    """
    from pipeline.io.config_file import read_config_file

    data = read_config_file(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    try:
        return ExperimentConfig.from_dict(data)
    except ValidationError as exc:
        by_origin: dict[str, list[str]] = {}
        for loc, text in problems(exc):
            by_origin.setdefault("command line" if path is None or (loc and loc[0] in given) else str(path),
                                 []).append(text)
        raise UserError("; ".join(f"{where}: {'; '.join(texts)}" for where, texts in by_origin.items())) from None
