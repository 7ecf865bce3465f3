"""The flows' run forms: typed, bounded parameter models that the Prefect UI renders and checks.

``train-eval``'s form is ``hscmae.config.ExperimentConfig`` itself (its bounds are declared there).
Each model here mirrors one stage config (``pipeline``, ``extractors`` dataclasses) with
choices as ``Literal`` and bounds and descriptions as ``Field``s, so the UI lists the choices
and the server refuses a bad value before a run is created (deployments enforce their
parameter schema). Defaults come from the dataclasses themselves. ``to_config`` gives the
stage config; the models also accept a config object (``from_attributes``), so Python callers
may pass ``ExtractConfig(...)`` where a flow takes ``ExtractSettings``.

Optional fields are plain ``X | None`` (default ``None``): their schema allows ``null``, which is
what the form sends for a field left empty, so a form submitted unchanged validates
(``SkipJsonSchema[None]`` hid ``null`` from the schema, and the form refused its own defaults).
Descriptions are rendered as Markdown, so they name placeholders without angle brackets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from extractors.config import ExtractConfig
from extractors.registry import VISUAL_MODEL_NAMES
from hscmae.config import Seed
from pipeline.media.acquire import AcquireConfig
from pipeline.datasets.demo_videos import DemoConfig
from pipeline.media.segment import SegmentConfig
from pipeline.media.youtube import YouTubeConfig

VisualModel = Literal[VISUAL_MODEL_NAMES]  # type: ignore[valid-type]  # the frame extractors, as choices
Device = Literal["cuda", "cpu"]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Form(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid", frozen=True)


class DemoSettings(_Form):
    """Shape of the generated demo clips (``pipeline.datasets.demo_videos.DemoConfig``)."""

    seconds: float = Field(DemoConfig.seconds, gt=0.0, le=600.0, description="length of each clip (s)")
    width: int = Field(DemoConfig.width, ge=16, le=1920, description="frame width (pixels)")
    height: int = Field(DemoConfig.height, ge=16, le=1080, description="frame height (pixels)")
    fps: int = Field(DemoConfig.fps, ge=1, le=60, description="frames per second")
    sample_rate: int = Field(DemoConfig.sample_rate, ge=8000, le=48000, description="audio sample rate (Hz)")
    seed: Seed = Field(DemoConfig.seed, description="seed of the generated sounds and pictures")
    two_event_fraction: Fraction = Field(DemoConfig.two_event_fraction, description="clips holding two events")
    spurious_fraction: Fraction = Field(DemoConfig.spurious_fraction,
                                        description="clips whose picture shows an unrelated class")
    test_fraction: float = Field(DemoConfig.test_fraction, gt=0.0, lt=1.0, description="share of clips in test")
    val_fraction: float = Field(DemoConfig.val_fraction, ge=0.0, lt=1.0, description="share of clips in val")

    def to_config(self) -> DemoConfig:
        return DemoConfig(**self.model_dump())


class SegmentSettings(_Form):
    """How clips are cut and normalised (``pipeline.media.segment.SegmentConfig``); defaults suit the extractors."""

    sample_rate: int = Field(SegmentConfig.sample_rate, ge=8000, le=48000, description="audio resampled to (Hz)")
    fps: float = Field(SegmentConfig.fps, gt=0.0, le=30.0, description="frames per second sampled")
    frame_size: tuple[Annotated[int, Field(ge=16, le=4096)], Annotated[int, Field(ge=16, le=4096)]] | None = Field(
        SegmentConfig.frame_size, description="(height, width); empty keeps the source")
    min_seconds: float = Field(SegmentConfig.min_seconds, gt=0.0, description="shorter clips are failures")
    length_tolerance_s: float = Field(SegmentConfig.length_tolerance_s, ge=0.0, le=5.0,
                                      description="shortfall accepted as codec framing (s)")
    silence_rms: float = Field(SegmentConfig.silence_rms, ge=0.0, le=1.0, description="RMS below this is silent")
    decoder: Literal["pyav", "decord"] = Field(SegmentConfig.decoder, description="frame decoder")

    def to_config(self) -> SegmentConfig:
        return SegmentConfig(**self.model_dump())


class AcquireSettings(_Form):
    """Where sources are read from (``pipeline.media.acquire.AcquireConfig``; downloads go under the output root)."""

    root: Path | None = Field(None, description="folder that relative file sources are under")
    archive: Path | None = Field(None, description="zip file or folder holding archive sources")
    youtube: YouTubeConfig = Field(default_factory=YouTubeConfig, description="download settings")

    def to_config(self, cache_dir: Path) -> AcquireConfig:
        return AcquireConfig(cache_dir=cache_dir, root=self.root, archive=self.archive, youtube=self.youtube)


class ExtractSettings(_Form):
    """How features are extracted (``extractors.extract.ExtractConfig``; shards size: ``clips_per_shard``)."""

    visual_model: VisualModel = Field(ExtractConfig.visual_model, description="frame extractor")
    audio_weights: str | None = Field(
        None, description='VGGish weights: a file, "random", or empty for the published file')
    pca_weights: str | None = Field(None, description="VGGish PCA file; empty: the published one")
    visual_weights: str | None = Field(
        None, description='visual weights: a file, "random", or empty for the published file')
    audio_postprocess: bool = Field(ExtractConfig.audio_postprocess, description="PCA-whiten and quantise VGGish")
    batch_clips: int = Field(ExtractConfig.batch_clips, ge=1, le=1024, description="clips per model batch")
    max_batch: int = Field(ExtractConfig.max_batch, ge=1, le=65536, description="most examples per forward pass")
    decode_workers: int = Field(ExtractConfig.decode_workers, ge=1, le=64, description="decoding threads")
    prefetch_clips: int = Field(ExtractConfig.prefetch_clips, ge=1, le=1024, description="clips decoded ahead")
    device: Device | None = Field(None, description="empty: cuda when available, else cpu")
    amp: bool = Field(ExtractConfig.amp, description="float16 autocast on CUDA")
    seed: Seed = Field(ExtractConfig.seed, description="initialisation seed of random weights")

    def to_config(self, clips_per_shard: int) -> ExtractConfig:
        return ExtractConfig(**self.model_dump(), clips_per_shard=clips_per_shard)
