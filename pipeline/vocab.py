"""The project's shared vocabulary: modality and split names, clip-id rules, the weights choice.

Every layer (datasets, media, features, extractors, the model, the flows) imports these names
from here, so each is spelled once. Importing this module loads nothing heavy.
"""

from __future__ import annotations

import re

MODALITIES = ("audio", "visual")
SPLITS = ("train", "val", "test")
DIRECTIONS = {"a2v": ("audio", "visual"), "v2a": ("visual", "audio")}  # retrieval direction -> (query, gallery) modality
CLIP_ID_PATTERN = re.compile(r"^(?!\.+$)[A-Za-z0-9_.-]+$")  # safe as a file name; not "." or ".."
RANDOM_WEIGHTS = "random"  # the weights choice "random initialisation"; shards and tables then say so
PUBLISHED_WEIGHTS = "published"  # the weights choice "the published file" (torch hub / Hugging Face cache)
WEIGHTS_CHOICES = (PUBLISHED_WEIGHTS, RANDOM_WEIGHTS)


def is_clip_id(value: object) -> bool:
    """True when ``value`` is a string usable as a clip id and as a file name (CLIP_ID_PATTERN)."""
    return isinstance(value, str) and CLIP_ID_PATTERN.match(value) is not None
