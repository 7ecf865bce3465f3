"""Training checkpoints as safetensors plus one small JSON, written so a crash never leaves a half one.

Layout of a checkpoint directory::

    epoch_0003/student.safetensors   teacher.safetensors   loss_weights.safetensors
               optimizer.safetensors rng.safetensors       state.json
    last.json                        # {"dir": "epoch_0003"}, rewritten last: the commit point
    best.safetensors                 # the best-on-val student

Every file is written with :func:`pipeline.io.atomic.atomic_path`; ``last.json`` moves to a new epoch
only once that epoch's files are complete, then older epoch directories are removed. A finished
run may drop its resume state (:func:`drop_resume_state`) and keep ``best.safetensors``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.io.atomic import atomic_path

LAST = "last.json"
BEST = "best.safetensors"
POSTHOC_CCA = "posthoc_cca.safetensors"  # a trained method's post-hoc linear CCA, beside BEST
EPOCH_DIR = re.compile(r"^epoch_\d{4,}$")


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))


def save_module(path: Path, module: nn.Module, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``module.state_dict()`` to ``path`` as safetensors, atomically."""
    save_tensors(path, module.state_dict(), metadata)


def load_module(path: Path, module: nn.Module) -> None:
    """Load safetensors ``path`` into ``module`` (strict: keys and shapes must match)."""
    device = next(module.parameters()).device
    module.load_state_dict(load_file(str(path), device=str(device)))


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-ready tensors and JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], rest: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_checkpoint(directory: Path, *, epoch: int, modules: Mapping[str, nn.Module],
                    optimizer: torch.optim.Optimizer, rng: Mapping[str, Tensor], state: Mapping[str, Any]) -> None:
    """Write the training state after ``epoch`` epochs and make it the one to resume from."""
    name = f"epoch_{epoch:04d}"
    target = directory / name
    for key, module in modules.items():
        save_module(target / f"{key}.safetensors", module)
    opt_tensors, opt_rest = _optimizer_parts(optimizer)
    save_tensors(target / "optimizer.safetensors", opt_tensors)
    save_tensors(target / "rng.safetensors", rng)
    _write_json(target / "state.json", {**state, "optimizer": opt_rest})
    _write_json(directory / LAST, {"dir": name})
    for old in directory.iterdir():
        if old.is_dir() and EPOCH_DIR.match(old.name) and old.name != name:
            shutil.rmtree(old)


def load_checkpoint(directory: Path, *, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                    identity: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """Restore ``modules`` and ``optimizer`` from the last complete checkpoint.

    ``identity`` (config, seed, data sizes) must equal what the checkpoint recorded, else ``ValueError``.
    Returns ``(state, rng)`` or ``None`` when ``directory`` holds no checkpoint yet.
    """
    last = directory / LAST
    if not last.exists():
        return None
    name = json.loads(last.read_text())["dir"]
    if not EPOCH_DIR.match(name):
        raise ValueError(f"{last}: names {name!r}, not an epoch directory")
    source = directory / name
    state = json.loads((source / "state.json").read_text())
    mismatch = [k for k in identity if state.get(k) != identity[k]]
    if mismatch:
        raise ValueError(f"{directory}: checkpoint was made with a different {mismatch}; use another directory")
    for key, module in modules.items():
        load_module(source / f"{key}.safetensors", module)
    # Loaded on the CPU: load_state_dict moves moment tensors to each parameter's device itself.
    _load_optimizer(optimizer, load_file(str(source / "optimizer.safetensors")), state.pop("optimizer"))
    return state, load_file(str(source / "rng.safetensors"))


def checkpoint_dir(run_dir: str | os.PathLike[str], method: str, seed: int) -> Path:
    """Where a run keeps ``method`` x ``seed``: its selected model, post-hoc CCA and resume state."""
    return Path(run_dir) / "checkpoints" / f"{method}-seed{seed}"


def drop_resume_state(folder: Path) -> None:
    """Remove a finished run's resume state (``last.json`` first, then ``epoch_NNNN/``); keep its best model."""
    (folder / LAST).unlink(missing_ok=True)
    for old in folder.iterdir():
        if old.is_dir() and EPOCH_DIR.match(old.name):
            shutil.rmtree(old)
