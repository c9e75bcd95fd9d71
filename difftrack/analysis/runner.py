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

Scale-out and resume - videos are sharded ``i % world == rank``; each finished video goes to
``OUT/videos/`` (a :class:`~difftrack.evaluation.store.ResultStore`: ``<id>.json``, and the first video's
figure arrays as ``<id>.npz``); a restarted run skips every finished video, and a run with another
configuration refuses a folder holding this one's. After a barrier rank 0 merges the per-video files in
list order, so the merged result does not depend on how many processes ran.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from difftrack.analysis.analyzer import Analyzer
from difftrack.analysis.jobs import VideoJob
from difftrack.distributed import barrier, rank_and_world
from difftrack.errors import UserError
from difftrack.evaluation.store import ResultStore, my_share

VIDEO_DIR = "videos"


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
    store = ResultStore(out / VIDEO_DIR, asdict(config))
    store.check()
    rank, world = rank_and_world()
    mine = list(my_share(jobs, rank, world))
    for index, job in tqdm(mine, desc=f"videos (rank {rank}/{world})", unit="video", disable=not progress):
        if store.load(job.id) is not None:
            continue
        record, figures = analyzer.analyze(job, want_figures=index == 0, progress=progress)
        store.save(job.id, record, figures)
        if after_video is not None:
            after_video(job)
    barrier(world)
    merged = None
    if rank == 0:
        records = [store.load(j.id) for j in jobs]
        merged = write_report(out, records, backbone, config, analyzer.layers, analyzer.steps, accuracy, top,
                              figures_path=store.arrays_path(jobs[0].id))
    barrier(world)
    return merged
