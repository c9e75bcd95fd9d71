"""Run the analysis over a list of videos: generated, real (with tracks or labelled), TAP-Vid, generator clips.

Generated videos - reduce on the fly, no replay. Descriptors are captured during the one sampling
run that produces the video (conditional CFG row only) and each captured (layer, step) is reduced
at once by :class:`~difftrack.analysis.metrics.StepReducer` to the predicted correspondences of a
dense grid of frame-0 query tokens plus the joint-attention scores: O(points x frames) per
(layer, step), nothing dense kept. Only after the last step is the video decoded and labelled
(pseudo ground truth at exactly those query points, which sit at token centres) and the kept
predictions scored. Replaying the sampler instead would cost a second generation per video and
would only match the first one bit for bit if every kernel were deterministic; reducing on the fly
measures the very trajectory that produced the video, at the price of choosing the query points
before the video exists (a grid, as the authors' CoTracker grid mode does anyway).

Real videos - encode, then per requested step one forward on noised / clean / inverted latents
(``--noise``), empty prompt, one branch (no CFG duplicate), stopping after the deepest requested
layer. Queries are the ground-truth points visible on frame 0.

Scale-out and resume - videos are sharded ``i % world == rank``; each finished video is written to
``OUT/videos/<id>.json`` atomically (figure arrays first, JSON last, so a JSON marks a complete
video); a restarted run skips every video whose JSON exists with the same configuration key. After
a barrier rank 0 merges the per-video files in list order, so the merged result does not depend on
how many processes ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from difftrack.analysis.analyzer import Analyzer
from difftrack.analysis.jobs import VideoJob
from difftrack.distributed import barrier, rank_and_world
from difftrack.errors import UserError
from difftrack.io import atomic_path, write_json

VIDEO_DIR = "videos"


def video_paths(out: Path, job: VideoJob) -> tuple[Path, Path]:
    return out / VIDEO_DIR / f"{job.id}.json", out / VIDEO_DIR / f"{job.id}.figures.npz"


def is_done(out: Path, job: VideoJob, key: str) -> bool:
    path = video_paths(out, job)[0]
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("config_key") == key
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def run_analysis(analyzer: Analyzer, jobs: list[VideoJob], out: str | Path, accuracy: str = "qk_pck",
                 top: int = 3, progress: bool = True, after_video=None) -> dict | None:
    """Analyse ``jobs`` (sharded over torchrun ranks), then merge and write the report (rank 0).

    Returns the merged results on rank 0 and None on other ranks. ``after_video(job)`` is called after
    each video's files are written (tests use it to simulate a kill).
    """
    from difftrack.analysis.report import write_report

    if not jobs:
        raise UserError("nothing to analyse: give --prompts, --video, --tapvid or --synthetic-seeds")
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise UserError(f"two videos would share the name {dup}; give each prompt/seed/video once")
    backbone, config = analyzer.backbone, analyzer.config
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    rank, world = rank_and_world()
    key = config.key()
    mine = [(i, j) for i, j in enumerate(jobs) if i % world == rank]
    for index, job in tqdm(mine, desc=f"videos (rank {rank}/{world})", unit="video", disable=not progress):
        if is_done(out, job, key):
            continue
        record, figures = analyzer.analyze(job, want_figures=index == 0, progress=progress)
        record["config_key"] = key
        json_path, npz_path = video_paths(out, job)
        json_path.parent.mkdir(parents=True, exist_ok=True)  # only now: a video that fails leaves no directory
        if figures is not None:
            with atomic_path(npz_path, suffix=".npz") as tmp:
                np.savez_compressed(tmp, **figures)
        write_json(json_path, record)
        if after_video is not None:
            after_video(job)
    barrier(world)
    merged = None
    if rank == 0:
        records = [json.loads(video_paths(out, j)[0].read_text()) for j in jobs]
        merged = write_report(out, records, backbone, config, analyzer.layers, analyzer.steps, accuracy, top,
                              figures_path=video_paths(out, jobs[0])[1])
    barrier(world)
    return merged
