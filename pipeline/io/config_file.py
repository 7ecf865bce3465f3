"""Config files: the mapping in a JSON or YAML file, or one clear error naming the file."""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from pipeline.io.errors import UserError, require_file


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a JSON or YAML config file; an unreadable file or a non-mapping is a :class:`UserError`."""
    path = require_file(path, "config file")
    try:
        text = path.read_text()
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                        f"({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: an experiment config must be a mapping of settings, got {type(loaded).__name__}")
    return loaded
