"""What an analysis runs over: its configuration (the run a resumed analysis must match), the videos (jobs),
and their sources: a real video file (with tracks from `difftrack track`, or labelled), a TAP-Vid
video, or a generator clip. Generated videos come from the sampler (:class:`Analyzer`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from difftrack.backbones import DEFAULT_BACKBONE
from difftrack.errors import UserError
from difftrack.io import load_tracks, read_video


@dataclass
class AnalysisConfig:
    """Everything that decides the numbers of one video's analysis (a resumed run must have the same)."""

    model: str = DEFAULT_BACKBONE
    layers: list[int] | None = None  # None: every layer
    steps: list[int] | None = None  # None: every step of the schedule
    num_steps: int = 50
    grid: int = 20  # query grid side on frame 0 (snapped to distinct token centres)
    labeller: str = "lk"
    guidance_scale: float = 6.0  # generated videos
    num_frames: int | None = None  # generated videos / real-video frames used; None: the model's window
    height: int | None = None
    width: int | None = None
    frame_stride: int = 1  # real videos: take every n-th frame
    noise: str = "add"  # real videos
    seed: int = 0  # real videos: seed of the added noise
    refine_window: int = 1
    bidirectional: bool = True  # average C[s->j] with C[j->s]^T, as the method does; False: forward only
    features: bool = True
    backend: str = "auto"
    figure_points: int = 3


@dataclass
class VideoJob:
    """One video to analyse. ``kind``: generated | video | tapvid | synthetic."""

    kind: str
    name: str
    prompt: str | None = None
    seed: int | None = None
    path: str | None = None
    tracks: str | None = None
    dataset: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.kind}-{self.name}")[:120]

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


def generation_size(backbone, config: AnalysisConfig) -> tuple[int, int, int]:
    """(frames, height, width) of generated videos: the model's trained sample size unless overridden."""
    frames, height, width = backbone.generation_size(config.num_frames, config.height, config.width)
    backbone.check_frame_count(frames)
    return frames, height, width


def release_tracks(job: VideoJob, size: tuple[int, int], frames: int):
    """The authors' tracks of a video of the release's dataset (``job.extra``), in pixels of ``size``."""
    from difftrack.data.release import read_release_tracks

    tracks, visible = read_release_tracks(job.extra["release_tracks"], job.extra["release_visibility"], size)
    if len(tracks) != frames:
        raise UserError(f"{job.extra['release_tracks']} tracks {len(tracks)} frames but {job.path or 'the video'} "
                        f"has {frames}; give the video generated for this prompt")
    return tracks, visible


def default_real_frames(backbone) -> int:
    """RGB frames of the model's trained window."""
    return (backbone.max_frames - 1) * backbone.temporal_compression + 1


def load_video(job: VideoJob, backbone, config: AnalysisConfig):
    """Frames (T, H, W, 3), and tracks (T, N, 2) / visibility (T, N) or None when they must be labelled."""
    cfg = config
    clip = None
    if job.kind == "video":
        video, _ = read_video(job.path, allow_short=job.extra.get("allow_short_video", False))
        tracks = visible = None
        if job.tracks:
            tracks, visible, _ = load_tracks(job.tracks, len(video))
        elif "release_tracks" in job.extra:
            tracks, visible = release_tracks(job, video.shape[1:3], len(video))
    elif job.kind == "tapvid":
        from difftrack.data.tapvid import TapVidReader
        from difftrack.evaluation.protocols import to_protocol

        sample_ = TapVidReader(job.dataset, job.path).load(job.name)
        video, points = to_protocol(sample_.video, sample_.points)
        tracks, visible = points.transpose(1, 0, 2), ~sample_.occluded.T
    elif job.kind == "synthetic":
        from difftrack.data.synthetic import generate_clip

        frames, height, width = generation_size(backbone, cfg)
        clip = generate_clip(job.seed, num_frames=frames, height=height, width=width)
        video, tracks, visible = clip.video, None, None
    else:
        raise ValueError(job.kind)
    window = cfg.num_frames or default_real_frames(backbone)
    take = np.arange(0, len(video), cfg.frame_stride)[:window]
    if clip is not None and len(take) != len(video):
        raise UserError("generator clips are rendered at the model's length; drop --frames/--frame-stride")
    video = video[take]
    if tracks is not None:
        tracks, visible = tracks[take], visible[take]
    return video, tracks, visible, clip
