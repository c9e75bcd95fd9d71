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
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from difftrack.cli import OneLineErrorParser, run_reporting_errors
from difftrack.distributed import gather_on_rank_zero, rank_and_world
from difftrack.data.tapvid import DATASETS, PROTOCOLS, TapVidReader, metric_mode, sample_queries, to_protocol
from difftrack.errors import UserError
from difftrack.io import atomic_path, format_number, json_safe, save_npz, write_json
from difftrack.metrics import METRIC_NAMES, average_over_videos, compute_tapvid_metrics
from difftrack.options import add_device_arguments, check_output_dir, device_and_dtype, output_dir, positive, seed

MODEL_TRACKERS = ("paper", "difftrack")
TRACKERS = MODEL_TRACKERS + ("zero_motion", "lucas_kanade")
DEFAULT_TRACKERS = ("difftrack", "zero_motion", "lucas_kanade")
SUMMARY_COLUMNS = (("AJ", "average_jaccard"), ("delta_avg", "average_pts_within_thresh"),
                   ("OA", "occlusion_accuracy"), ("delta_1", "pts_within_1"), ("delta_2", "pts_within_2"),
                   ("delta_4", "pts_within_4"), ("delta_8", "pts_within_8"), ("delta_16", "pts_within_16"),
                   ("J_1", "jaccard_1"), ("J_2", "jaccard_2"), ("J_4", "jaccard_4"), ("J_8", "jaccard_8"),
                   ("J_16", "jaccard_16"))


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


def evaluate_video(tracker, frames: np.ndarray, points: np.ndarray, occluded: np.ndarray, protocol: str) -> dict:
    """Run one tracker on one protocol-sized video; metrics and predictions as plain arrays."""
    queries = sample_queries(points, occluded, protocol)
    num_tracks, num_frames = occluded.shape
    num_queries = len(queries.query_points)
    if num_queries:
        tracks, visible = tracker(frames, queries.query_points)
        query_tracks = np.asarray(tracks, dtype=np.float32).transpose(1, 0, 2)
        query_occluded = ~np.asarray(visible, dtype=bool).T
    else:
        query_tracks = np.zeros((0, num_frames, 2), np.float32)
        query_occluded = np.zeros((0, num_frames), bool)
    metrics = compute_tapvid_metrics(queries.query_points, queries.occluded, queries.target_points,
                                     query_occluded, query_tracks, metric_mode(protocol))
    track_tracks = np.zeros((num_tracks, num_frames, 2), np.float32)
    track_occluded = np.ones((num_tracks, num_frames), bool)
    queried, first_query = np.unique(queries.track_index, return_index=True)
    track_tracks[queried] = query_tracks[first_query]
    track_occluded[queried] = query_occluded[first_query]
    return {"metrics": metrics, "tracks": track_tracks, "occluded": track_occluded,
            "queries": queries.query_points, "query_track": queries.track_index,
            "query_tracks": query_tracks, "query_occluded": query_occluded,
            "target_points": queries.target_points, "target_occluded": queries.occluded}


class PartialStore:
    """Finished per-video results of one tracker, one atomically written .npz per video index."""

    ARRAYS = ("tracks", "occluded", "queries", "query_track", "query_tracks", "query_occluded")

    def __init__(self, out: Path, tracker: str, run: dict):
        self.directory = out / "partial" / tracker
        self.run = run

    def check(self) -> None:
        """Refuse to mix results of a different run (dataset, root, mode or model) into this one."""
        config = self.directory / "run.json"
        stored = json.loads(config.read_text()) if config.is_file() else self.run
        if stored != self.run:
            raise UserError(f"{self.directory} holds results of another run ({json.dumps(stored)}); "
                            f"choose another --out or delete that folder")

    def _path(self, index: int) -> Path:
        return self.directory / f"{index:06d}.npz"

    def load(self, index: int, name: str) -> dict | None:
        path = self._path(index)
        if not path.is_file():
            return None
        with np.load(path) as data:
            if str(data["name"]) != name:
                return None
            result = {key: data[key] for key in self.ARRAYS}
            result["metrics"] = dict(zip(METRIC_NAMES, data["metrics"].tolist()))
        return result

    def save(self, index: int, name: str, result: dict) -> None:
        """Store one finished video; the folder and its run.json appear with the first one, so a run that
        fails on its first video leaves nothing behind."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / "run.json").is_file():
            write_json(self.directory / "run.json", self.run)
        save_npz(self._path(index), name=np.array(name),
                 metrics=np.array([result["metrics"][m] for m in METRIC_NAMES], np.float64),
                 **{key: result[key] for key in self.ARRAYS})


def run(args: argparse.Namespace) -> None:
    reader = TapVidReader(args.dataset, args.root)
    args.model = args.model or _default_model()
    trackers, facts = build_trackers(args)
    run_config = {"dataset": args.dataset, "source": str(reader.source), "protocol": args.protocol}
    stores = {}
    for name in args.trackers:
        config = run_config
        if name in MODEL_TRACKERS:
            config = dict(run_config, model=args.model, revision=facts["revision"], settings=facts["settings"][name])
        stores[name] = PartialStore(args.out, name, config)
        stores[name].check()

    rank, world = rank_and_world()

    total = reader.num_videos if args.limit is None else min(args.limit, reader.num_videos or args.limit)
    mine = None if total is None else len(range(rank, total, world))
    local = []
    with tqdm(total=mine, desc=f"tapvid {args.dataset} ({args.protocol})", unit="video", disable=rank != 0) as bar:
        for index, (name, load) in enumerate(itertools.islice(reader.entries(), args.limit)):
            if index % world != rank:
                continue
            results = {tracker: stores[tracker].load(index, name) for tracker in trackers}
            missing = [tracker for tracker, result in results.items() if result is None]
            if missing:
                sample = load()
                frames, points = to_protocol(sample)
                for tracker in missing:
                    results[tracker] = evaluate_video(trackers[tracker], frames, points, sample.occluded,
                                                      args.protocol)
                    stores[tracker].save(index, name, results[tracker])
            bar.update(1)
            local.append((index, name, results))
    gathered = gather_on_rank_zero(local, world)
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        run_facts = {"dataset": args.dataset, "protocol": args.protocol, "videos": len(gathered), **facts}
        write_outputs(args.out, args.trackers, sorted(gathered, key=lambda item: item[0]), run_facts)
        shutil.rmtree(args.out / "partial", ignore_errors=True)  # only an interrupted run needs them


def _default_model() -> str:
    from difftrack.backbones import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE


def write_outputs(out: Path, tracker_names: list[str], videos: list, run_facts: dict) -> None:
    summary = {t: average_over_videos([results[t]["metrics"] for _, _, results in videos]) for t in tracker_names}
    write_json(out / "summary.json", json_safe({**summary, "run": run_facts}))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["tracker", "video", "num_tracks", "num_queries", *METRIC_NAMES])
    for tracker in tracker_names:
        for _, name, results in videos:
            r = results[tracker]
            writer.writerow([tracker, name, len(r["tracks"]), len(r["queries"]),
                             *(f"{r['metrics'][m]:.6f}" for m in METRIC_NAMES)])
    with atomic_path(out / "per_video.csv") as tmp:
        tmp.write_text(buffer.getvalue())

    for tracker in tracker_names:
        arrays = {}
        for _, name, results in videos:
            for key in PartialStore.ARRAYS:
                arrays[f"{name}/{key}"] = results[tracker][key]
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
