"""TAP-Vid benchmark: the paper's tracker and difftrack's next to zero motion and Lucas-Kanade, same reader,
same metrics, one run.

    python benchmarks/tapvid.py --dataset davis --root tapvid_davis.pkl --protocol first --out results/davis
    python benchmarks/tapvid.py --dataset davis --root tapvid_davis.pkl --model THUDM/CogVideoX-2b \
        --protocol release --trackers paper,difftrack,zero_motion,lucas_kanade --out results/davis-release
    torchrun --nproc_per_node 2 benchmarks/tapvid.py --dataset kinetics --root tapvid_kinetics/ ...

Frames are resized to 256x256 and ground truth scaled to raster pixels (the TAP-Vid protocol); queries
are sampled per --protocol and every tracker gets them as (t, x, y) raster pixels:

- first: each track queried on its first visible frame (tapnet's 'first');
- strided: every 5th frame, each track visible there (tapnet's 'strided');
- release: the DiffTrack release's protocol: only the tracks visible on frame 0, queried on frame 0, scored
  as 'first'. The paper's tracker resizes the frames to the size the paper tracked the model at itself.

Trackers: paper (the paper's procedure, `difftrack track --tracker paper`), difftrack (difftrack's own),
zero_motion, lucas_kanade; the two model trackers share one loaded model. Outputs in --out DIR:

- summary.json {tracker: {metric: value in [0, 1]}} averaged over videos, plus "run": the dataset, protocol,
  device, dtype, model, its revision and every model tracker's settings; summary.md (the same, x100);
- per_video.csv, one row per (tracker, video);
- timing.json: this invocation's wall and CPU seconds (rank 0's process, children included), torch's threads
  and the load average at its end (kept apart from summary.json, which a resumed or multi-process run gives
  bit for bit);
- predictions_{tracker}.npz: per video v, ``v/tracks`` float32 (N, T, 2) raster (x, y) and
  ``v/occluded`` bool (N, T) for every track in its original order (the prediction from the track's
  first query; never-queried tracks hold zeros and occluded True), and, so that 'strided' runs can be
  re-scored too, every query: ``v/queries`` (Q, 3) as (t, x, y) raster, ``v/query_track`` (Q,) track
  index, ``v/query_tracks`` (Q, T, 2), ``v/query_occluded`` (Q, T).

Per-video results go to DIR/partial/{tracker}/ as they finish, so an interrupted run resumes where it
stopped; a finished run removes them. Under torchrun each rank takes the videos with index % world_size ==
rank, on its own GPU (LOCAL_RANK), and rank 0 gathers and writes the outputs; the result equals a
single-process run.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from difftrack.data.tapvid import DATASETS, TapVidReader
from difftrack.errors import OneLineErrorParser, UserError, run_reporting_errors
from difftrack.evaluation.metrics import METRIC_NAMES, SUMMARY_COLUMNS, average_over_videos
from difftrack.evaluation.protocols import PROTOCOLS
from difftrack.formatting import format_number
from difftrack.io import atomic_path, json_safe, save_npz, write_json
from difftrack.options import add_device_arguments, check_output_dir, device_and_dtype, output_dir, positive, seed

MODEL_TRACKERS = ("paper", "difftrack")
TRACKERS = MODEL_TRACKERS + ("zero_motion", "lucas_kanade")
DEFAULT_TRACKERS = ("difftrack", "zero_motion", "lucas_kanade")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="python benchmarks/tapvid.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True,
                        help="directory holding the dataset's files, or the DAVIS / RGB-Stacking pickle itself")
    parser.add_argument("--protocol", "--mode", dest="protocol", default="first", choices=PROTOCOLS,
                        help="query sampling: tapnet's first / strided, or the DiffTrack release's (frame-0 "
                             "queries of the tracks visible there); default: first")
    parser.add_argument("--model", default=None,
                        help="the model trackers' model: registry name, hub id or local directory (default: the "
                             "embedded default, first in `difftrack models`)")
    add_device_arguments(parser)
    parser.add_argument("--trackers", default=",".join(DEFAULT_TRACKERS),
                        help=f"comma-separated subset of {','.join(TRACKERS)} (default: {','.join(DEFAULT_TRACKERS)})")
    parser.add_argument("--release-quirks", action="store_true",
                        help="the paper tracker with the release's temperature and read-out (its own arithmetic)")
    parser.add_argument("--vae-sample-seed", type=seed, default=None,
                        help="the paper tracker encodes with the VAE posterior's sample from this seed, as the "
                             "release does (default: the posterior's mode)")
    parser.add_argument("--out", default=None, type=output_dir, help="output directory (default: ./tapvid-DATASET-MODE)")
    parser.add_argument("--limit", type=positive, default=None, help="only the first N videos in sorted order")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    args.trackers = [t.strip() for t in args.trackers.split(",") if t.strip()]
    unknown = [t for t in args.trackers if t not in TRACKERS]
    if unknown or not args.trackers:
        raise UserError(f"unknown tracker {', '.join(unknown) or '(none given)'} in --trackers; choose from "
                        f"{','.join(TRACKERS)}")
    if len(set(args.trackers)) != len(args.trackers):
        raise UserError(f"--trackers lists a tracker twice: {','.join(args.trackers)}")
    args.out = Path(args.out) if args.out else check_output_dir(f"tapvid-{args.dataset}-{args.protocol}")
    args.backbone_options = device_and_dtype(_rank_device(args.device), args.dtype)
    return args


def _rank_device(device: str | None) -> str | None:
    """Under torchrun each rank's GPU is cuda:LOCAL_RANK unless --device names one."""
    import torch

    wants_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and wants_cuda:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(torch.cuda.device_count(), 1)}"
    return device


def build_trackers(args) -> tuple[dict, dict]:
    """The trackers by name, and the run facts summary.json records (model, revision, device, dtype, settings)."""
    from difftrack.baselines import BASELINES

    trackers = {name: BASELINES[name] for name in args.trackers if name not in MODEL_TRACKERS}
    facts = {}
    wanted = [name for name in args.trackers if name in MODEL_TRACKERS]
    if wanted:
        import difftrack
        from difftrack.tracker import create_tracker

        backbone = difftrack.create_backbone(args.model, **args.backbone_options)
        paper = {"release_quirks": args.release_quirks, "vae_sample_seed": args.vae_sample_seed}
        for name in wanted:
            trackers[name] = create_tracker(name, backbone, **(paper if name == "paper" else {}))
        facts = {"model": args.model, "revision": backbone.revision(), "device": str(backbone.device),
                 "dtype": str(backbone.dtype).removeprefix("torch."),
                 "settings": {name: _settings(trackers[name]) for name in wanted}}
    return trackers, facts


def _settings(tracker) -> dict:
    from dataclasses import asdict

    return json_safe(asdict(tracker.config))


def run(args: argparse.Namespace) -> None:
    from difftrack.evaluation.scoring import score_dataset

    started = (time.perf_counter(), _cpu_seconds())
    reader = TapVidReader(args.dataset, args.root)
    reader.checked_names(args.limit)
    args.model = args.model or _default_model()
    trackers, facts = build_trackers(args)
    run_config = {"dataset": args.dataset, "source": str(reader.source), "protocol": args.protocol}
    runs = {name: dict(run_config, model=args.model, revision=facts["revision"], settings=facts["settings"][name])
            if name in MODEL_TRACKERS else run_config for name in args.trackers}
    # Finished videos wait in partial/ until the run completes, so that an interrupted run resumes there.
    videos = score_dataset(trackers, reader.entries(), args.protocol, args.out / "partial", runs, limit=args.limit,
                           num_videos=reader.num_videos)
    if videos is not None:  # rank 0
        args.out.mkdir(parents=True, exist_ok=True)
        run_facts = {"dataset": args.dataset, "protocol": args.protocol, "videos": len(videos), **facts}
        write_outputs(args.out, args.trackers, videos, run_facts)
        write_json(args.out / "timing.json", timing(*started))
        shutil.rmtree(args.out / "partial", ignore_errors=True)


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def timing(wall_start: float, cpu_start: float) -> dict:
    import torch

    return {"wall_seconds": round(time.perf_counter() - wall_start, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu_start, 1), "threads": torch.get_num_threads(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def _default_model() -> str:
    from difftrack.backbones import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE


def write_outputs(out: Path, tracker_names: list[str], videos: list, run_facts: dict) -> None:
    summary = {t: average_over_videos([scores[t].metrics for _, _, scores in videos]) for t in tracker_names}
    write_json(out / "summary.json", json_safe({**summary, "run": run_facts}))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["tracker", "video", "num_tracks", "num_queries", *METRIC_NAMES])
    for tracker in tracker_names:
        for name, num_tracks, scores in videos:
            score = scores[tracker]
            writer.writerow([tracker, name, num_tracks, len(score.queries.query_points),
                             *(f"{score.metrics[m]:.6f}" for m in METRIC_NAMES)])
    with atomic_path(out / "per_video.csv") as tmp:
        tmp.write_text(buffer.getvalue())

    for tracker in tracker_names:
        arrays = {}
        for name, num_tracks, scores in videos:
            score = scores[tracker]
            tracks, occluded = score.per_track(num_tracks)
            arrays.update({f"{name}/tracks": tracks, f"{name}/occluded": occluded,
                           f"{name}/queries": score.queries.query_points,
                           f"{name}/query_track": score.queries.track_index,
                           f"{name}/query_tracks": score.tracks, f"{name}/query_occluded": score.occluded})
        save_npz(out / f"predictions_{tracker}.npz", **arrays)

    lines = [f"TAP-Vid metrics x100, averaged over {len(videos)} videos; protocol {run_facts['protocol']}"
             + (f", model {run_facts['model']} on {run_facts['device']} in {run_facts['dtype']}"
                if "model" in run_facts else "") + ".", "",
             "| tracker | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
             "|---|" + "---:|" * len(SUMMARY_COLUMNS)]
    for tracker in tracker_names:
        cells = [format_number(summary[tracker][metric], ".1f", scale=100) for _, metric in SUMMARY_COLUMNS]
        lines.append(f"| {tracker} | " + " | ".join(cells) + " |")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting_errors(lambda a: run(parse_args(a)), argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
