"""Measure where (layer) and when (denoising step) a video DiT's attention matches points across frames.

Generated videos: each prompt is generated with each seed; descriptors are captured during that very
generation (conditional branch) and reduced on the fly; the finished video is labelled with pseudo
ground truth (OpenCV Lucas-Kanade by default) and every (layer, step) is scored. Real videos: the
video is encoded and, per step, noised (--noise add), kept clean or inverted, then run once with an
empty prompt up to the deepest requested layer. Generator clips (--synthetic-seeds) are real videos
with exact ground truth.

Writes OUT/results.json, OUT/*.csv, OUT/recommendation.json (read by `track --layers auto`),
heatmaps and curves as PNG, and OUT/index.html. Per-video results go to OUT/videos/ as they finish:
rerun the same command to resume. Scale out with `torchrun --nproc_per_node N difftrack analyze ...`.

examples:
  difftrack analyze --prompts prompts.txt --seeds 0 1 --steps 0 10 20 30 40 49 --out runs/analysis
  difftrack analyze --video clip.mp4 --tracks clip_tracks.npz --noise add --out runs/clip
  difftrack analyze --tapvid data/tapvid_davis.pkl --dataset davis --limit 5 --out runs/davis
  difftrack analyze --synthetic-seeds 500000 500001 --layers all --steps 0 5 9 --num-steps 10
"""

from __future__ import annotations

from pathlib import Path

import difftrack
from difftrack.backbones import DEFAULT_BACKBONE, check_known_layers
from difftrack.data.tapvid import DATASETS
from difftrack.errors import UserError
from difftrack.formatting import count_noun
from difftrack.noising import NOISE_MODES, check_step
from difftrack.options import add_device_arguments, backbone_options, integer, number, output_dir, positive, seed

RANK_METRICS = ("qk_pck", "qk_pck_token", "qk_pck_moved", "qk_pck_token_moved")


def add_arguments(p):
    src = p.add_argument_group("videos (choose one source)")
    src.add_argument("--prompts", help="text file, one prompt per line: generate and analyse each prompt")
    src.add_argument("--seeds", nargs="+", type=seed, default=[0], help="generation seeds; every prompt x every seed")
    src.add_argument("--video", nargs="+", help="real video file(s) to analyse")
    src.add_argument("--tracks", nargs="+",
                     help="ground truth per --video: npz with tracks (T, N, 2) and visibility (T, N) as written "
                          "by `difftrack track`; without it the video is labelled with --labeller")
    src.add_argument("--tapvid", help="TAP-Vid pickle or directory (ground truth from the dataset)")
    src.add_argument("--dataset", default="davis", choices=DATASETS, help="TAP-Vid dataset (default davis)")
    src.add_argument("--limit", type=positive, help="TAP-Vid: first N videos in sorted order")
    src.add_argument("--synthetic-seeds", nargs="+", type=seed,
                     help="clips of difftrack's procedural generator (exact ground truth), by seed")
    src.add_argument("--release-dataset", metavar="DIR",
                     help="a folder of the DiffTrack release's dataset (dataset/<model>/<fg|bg>/: prompt.txt, "
                          "tracks/NNN.npy, visibility/NNN.npy): generate each prompt (with each --seeds) and score "
                          "against the authors' tracks, which describe the videos the authors generated")
    src.add_argument("--videos", metavar="VIDEO_DIR",
                     help="with --release-dataset: the generated videos as VIDEO_DIR/NNN.mp4, analysed instead of "
                          "generating them")

    p.add_argument("--model", default=DEFAULT_BACKBONE, help=f"registry name, hub id or pipeline dir "
                                                             f"(default {DEFAULT_BACKBONE})")
    add_device_arguments(p)
    p.add_argument("--layers", nargs="+", default=["all"], help="`all` (default) or 0-based layer indices")
    p.add_argument("--steps", nargs="+", default=["all"],
                   help="`all` (default) or step indices of the --num-steps schedule (0 = noisiest)")
    p.add_argument("--num-steps", type=positive, default=50, help="sampler schedule length (default 50)")
    p.add_argument("--grid", type=positive, default=20, help="N x N frame-0 query grid, snapped to tokens (default 20)")
    p.add_argument("--labeller", default="lk", choices=("lk", "cotracker"),
                   help="pseudo ground truth for generated / unlabelled videos (default lk: OpenCV Lucas-Kanade)")
    p.add_argument("--guidance-scale", type=number(min=0), default=6.0, help="CFG scale of generation (default 6)")
    p.add_argument("--frames", type=integer(min=2),
                   help="frames to generate / to take from a real video, 2 or more (default: the model's)")
    p.add_argument("--height", type=positive, help="generated height in pixels (default: the model's)")
    p.add_argument("--width", type=positive, help="generated width in pixels (default: the model's)")
    p.add_argument("--frame-stride", type=positive, default=1, help="real videos: take every n-th frame")
    p.add_argument("--allow-short-video", action="store_true",
                   help="real videos: analyse the frames a damaged or cut-short file decodes (default: refuse it)")
    p.add_argument("--noise", choices=NOISE_MODES, default="add",
                   help="real videos: add noise at the step (default), feed clean latents, or invert to it")
    p.add_argument("--seed", type=seed, default=0, help="real videos: seed of the added noise")
    p.add_argument("--accuracy", choices=RANK_METRICS, default="qk_pck",
                   help="accuracy the ranking uses (default qk_pck: 8 px at 480x720, scaled)")
    p.add_argument("--top", type=positive, default=3, help="layers in recommendation.json (default 3)")
    p.add_argument("--no-features", action="store_true", help="skip intermediate-feature matching")
    p.add_argument("--forward-only", action="store_true",
                   help="match in one direction, C[s->j], instead of the method's average of both directions")
    p.add_argument("--out", default="runs/analysis", type=output_dir, help="report directory (default runs/analysis)")


def _indices(values: list[str], flag: str) -> list[int] | None:
    if values == ["all"]:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UserError(f"{flag} takes `all` or integers, got {' '.join(values)}") from None


def build_jobs(args, prompts: list[str] | None) -> tuple[list, dict[str, int]]:
    """The videos to analyse, and the frame count of each --video file; ``prompts`` are those of --prompts, read
    by the caller. Every file is read here, before the model loads, so that a bad one fails in seconds."""
    from difftrack.analysis import VideoJob
    from difftrack.io import load_tracks, read_video

    sources = [s for s in ("prompts", "video", "tapvid", "synthetic_seeds", "release_dataset") if getattr(args, s)]
    if len(sources) != 1:
        raise UserError("give exactly one video source: --prompts, --video, --tapvid, --synthetic-seeds or "
                        "--release-dataset")
    if args.tracks and not args.video:
        raise UserError("--tracks goes with --video")
    if args.videos and not args.release_dataset:
        raise UserError("--videos goes with --release-dataset (for single files use --video)")
    if args.release_dataset:
        return release_jobs(args), {}
    if args.prompts:
        return [VideoJob("generated", f"p{i:03d}-s{seed}", prompt=prompt, seed=seed)
                for i, prompt in enumerate(prompts) for seed in args.seeds], {}
    if args.synthetic_seeds:
        return [VideoJob("synthetic", str(seed), seed=seed) for seed in args.synthetic_seeds], {}
    if args.tapvid:
        from difftrack.data.tapvid import TapVidReader

        names = TapVidReader(args.dataset, args.tapvid).checked_names(args.limit)
        return [VideoJob("tapvid", name, path=args.tapvid, dataset=args.dataset) for name in names], {}
    if args.tracks and len(args.tracks) != len(args.video):
        raise UserError(f"got {len(args.video)} videos but {len(args.tracks)} tracks files; pass one per video")
    jobs, lengths = [], {}
    for i, path in enumerate(args.video):
        tracks = args.tracks[i] if args.tracks else None
        job = VideoJob("video", Path(path).stem, path=str(path), tracks=tracks,
                       extra={"allow_short_video": True} if args.allow_short_video else {})
        video, _ = read_video(path, allow_short=args.allow_short_video)
        used = min(len(range(0, len(video), args.frame_stride)), args.frames or len(video))
        if used < 2:
            stride = f" at --frame-stride {args.frame_stride}" if args.frame_stride > 1 else ""
            raise UserError(f"{path} gives {count_noun(used, 'frame')} to analyse ({count_noun(len(video), 'frame')} "
                            f"in the file{stride}); matching across frames needs at least 2: pass a longer video"
                            + (" or a smaller --frame-stride" if stride else ""))
        if tracks:
            load_tracks(tracks, len(video))
        jobs.append(job)
        lengths[job.id] = len(video)
    return jobs, lengths


def release_jobs(args) -> list:
    """Jobs of the release's dataset: its videos from --videos, or each prompt generated with each --seeds; both
    scored against the authors' tracks. Every file is checked here, before the model loads."""
    from difftrack.analysis import VideoJob
    from difftrack.data.release import ReleaseDataset
    from difftrack.io import read_video

    dataset = ReleaseDataset(args.release_dataset)
    jobs = []
    for entry in dataset.entries:
        dataset.load_tracks(entry)
        extra = {"release_tracks": str(entry.tracks_path), "release_visibility": str(entry.visibility_path)}
        if args.videos:
            path = Path(args.videos) / f"{entry.name}.mp4"
            read_video(path, allow_short=args.allow_short_video)
            jobs.append(VideoJob("video", entry.name, path=str(path), extra=extra))
        else:
            jobs += [VideoJob("generated", f"{entry.name}-s{s}", prompt=entry.prompt, seed=s, extra=extra)
                     for s in args.seeds]
    return jobs


def run(args):
    from difftrack.io import read_prompts

    # Everything that can be checked without the model's weights (and without torch), before they load:
    prompts = read_prompts(args.prompts) if args.prompts else None
    layers, steps = _indices(args.layers, "--layers"), _indices(args.steps, "--steps")
    check_known_layers(args.model, layers)
    for step in steps or ():
        check_step(step, args.num_steps)
    jobs, lengths = build_jobs(args, prompts)

    from difftrack.analysis import AnalysisConfig, Analyzer, run_analysis
    from difftrack.analysis.jobs import default_real_frames

    backbone = difftrack.create_backbone(args.model, **backbone_options(args))
    config = AnalysisConfig(
        model=args.model, layers=layers, steps=steps,
        num_steps=args.num_steps, grid=args.grid, labeller=args.labeller, guidance_scale=args.guidance_scale,
        num_frames=args.frames, height=args.height, width=args.width, frame_stride=args.frame_stride,
        noise=args.noise, seed=args.seed, features=not args.no_features, bidirectional=not args.forward_only)
    analyzer = Analyzer(backbone, config)
    # Errors that would otherwise surface mid-run, before anything is written:
    window = args.frames or default_real_frames(backbone)
    for job in jobs:
        if job.id in lengths:
            backbone.check_frame_count(min(len(range(0, lengths[job.id], args.frame_stride)), window))
    if args.prompts or (args.release_dataset and not args.videos):
        prompts = prompts or [job.prompt for job in jobs]
        if backbone.takes_image:
            raise UserError(f"{backbone.name} generates from a first frame, which `analyze --prompts` does not "
                            f"take; analyse real videos (--video, --tapvid or --synthetic-seeds) instead")
        backbone.check_prompt_words(prompts)
        analyzer.generation_size()
    if args.prompts or (args.video and not args.tracks):
        analyzer.labeller  # noqa: B018 - builds the labeller (CoTracker: checks the local cache)
    results = run_analysis(analyzer, jobs, args.out, accuracy=args.accuracy, top=args.top)
    if results is not None:
        advice = (f"recommendation {Path(args.out) / 'recommendation.json'}" if results["ranking"] else
                  "no recommendation: no layer and step has a score (no ground-truth point visible on two frames)")
        sizes = [count_noun(len(results[key]), key[:-1]) for key in ("videos", "layers", "steps")]
        print(f"analysed {' x '.join(sizes)} -> {Path(args.out) / 'index.html'}; {advice}")
