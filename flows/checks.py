"""Checks of the flows' command-line inputs, run before Prefect starts or a model loads.

Each raises a :class:`pipeline.io.errors.UserError` whose message names the file (and the line
or row) and what is wrong, so :func:`pipeline.io.errors.user_errors` turns it into one
``error:`` line and exit status 2 within a second or two, not a traceback after the start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extractors.registry import VGGISH_WEIGHTS, VISUAL_MODELS
from extractors.weights import WeightsArg, WeightsNotFoundError, is_random, resolve_weights
from pipeline.datasets.schema import read_manifest
from pipeline.features.shards import check_shards
from pipeline.io.config_file import read_config_file
from pipeline.io.errors import UserError, require_dir
from pipeline.vocab import RANDOM_WEIGHTS


def check_form(flow_name: str, values: Mapping[str, tuple[Any, Any]]) -> None:
    """A flow's bounded parameters, ``name: (declared type, value)``, checked as the flow's run form checks them,
    before Prefect loads: every value out of bounds in one :class:`UserError`, ``flow: name: problem; ...``.

    The flows declare those types once (``Annotated[int, Field(ge=1)]``) and use them in their signatures too.
    """
    from pydantic import ValidationError, create_model

    form = create_model(flow_name, **{name: (kind, ...) for name, (kind, _) in values.items()})
    try:
        form.model_validate({name: value for name, (_, value) in values.items()})
    except ValidationError as exc:
        problems = [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise UserError(f"{flow_name}: {'; '.join(problems)}") from None


def check_weights(visual_model: str, *, audio: WeightsArg, visual: WeightsArg) -> None:
    """The weight files an extraction will load are there (found as the extractors find them, no torch); one
    :class:`UserError` names every missing file and how to get them (``python -m extractors.weights fetch ...``)."""
    missing: list[WeightsNotFoundError] = []
    for spec, weights in ((VGGISH_WEIGHTS, audio), (VISUAL_MODELS[visual_model].weights, visual)):
        if not is_random(weights):
            try:
                resolve_weights(spec, weights)
            except WeightsNotFoundError as exc:
                missing.append(exc)
    if missing and all(exc.fetch_name for exc in missing):  # published files: one command fetches them all
        names = " ".join(exc.fetch_name for exc in missing)
        raise UserError(f"{'; '.join(exc.missing for exc in missing)}; get {'them' if len(missing) > 1 else 'it'} "
                        f"with `python -m extractors.weights fetch {names}` or run with --weights {RANDOM_WEIGHTS}")
    if missing:
        raise UserError("; ".join(str(exc) for exc in missing))


def check_build_features(manifest: Path | None, *, root: Path | None, archive: Path | None) -> None:
    """Arguments of ``flows.build_features``: the manifest valid, folders present (its values: the flow's form)."""
    if manifest is not None:
        read_manifest(manifest)
    if root is not None:
        require_dir(root, "dataset root (--root)")
    if archive is not None and not Path(archive).exists():
        raise UserError(f"{archive}: no such archive (--archive)")


def check_train_eval(features: Path | None, config: Path | None) -> None:
    """Arguments of ``flows.train_eval``: shards readable, the config file a mapping (its values and the
    other flags are checked by ``hscmae.config.load_config``, where their bounds are declared)."""
    if features is not None:
        check_shards(features)
    if config is not None:
        shards = read_config_file(config).get("shards")
        if features is None and shards:
            check_shards(shards)

