"""Track points through a video zero-shot with a video DiT's attention.

Writes OUT.npz (tracks (T, N, 2) pixel x, y; visibility (T, N); queries (N, 3) as t, x, y),
OUT.json (the same plus meta) and OUT.mp4 (an overlay with coloured trails; filled dots = visible,
rings = predicted occluded).

Two trackers (--tracker). paper, the default for real checkpoints: the paper's procedure as its release
runs it: frames resized to the size the paper tracked the model at, frame 0 (each query frame) matched
directly to every other frame in chunks of frames spread over the video, clean latents at the method's
layer and step, costs of both directions averaged over chunks, and each point read from its neighbouring
tokens' argmax targets; every point visible unless --occlusion. Two defects of the release are fixed
(--release-quirks restores them).

difftrack, the default for the embedded model: the video is cut into windows of --window frames (one
frame shared between neighbours); one forward
per window serves every query in it, so the cost grows with the video length, not with the number of
query frames. Within a window each frame's best candidate tokens are chained by a Viterbi pass with a
motion prior and an occluded state (--temporal none: per-frame argmax); the prior mixes free motion with
the scene's dominant motion, so points on a panning wall follow the pan (--background-weight 0: off).
An occluded point moves on with that motion; a frame that gets little of the point's joint attention
(a covered point: nothing there looks like it) reads as occluded (--presence-weight 0: off), and a point
the motion carries out of the frame is occluded there. A track that leaves a window occluded starts the
next one occluded, matched with its descriptor from the last frame it was seen on.

examples:
  difftrack track clip.mp4 --grid 8                     # 8x8 grid on frame 0, embedded model
  difftrack track clip.mp4 --grid 10 --model THUDM/CogVideoX-2b --tracker paper   # the paper's procedure
  difftrack track frames/ --grid 10                     # a folder of PNG / JPEG frames, in name order
  difftrack track clip.mp4 --points pts.json --out runs/clip
  difftrack track clip.mp4 --grid 10 --grid-frame 12    # queries on frame 12, tracked both ways
  difftrack track clip.mp4 --grid 8 --layers auto --recommendation runs/analysis
  difftrack track clip.mp4 --grid 8 --noise-draws 4 --temporal none   # DIFT-style ensemble, per-frame argmax
  difftrack track clip.mp4 --grid 8 --model THUDM/CogVideoX-5b --layers 17 --steps 49 --num-steps 50
  difftrack synth clip.mp4 && difftrack track clip.mp4 --gt clip_gt.npz   # track the truth's queries, score them

With --gt the tracks are scored against the ground truth next to zero motion and Lucas-Kanade (TAP-Vid
metrics: average Jaccard, delta_avg = points within 1-16 px, occlusion accuracy; frames after each query
frame, coordinates scaled to 256x256 as TAP-Vid scores them); the scores go to OUT.json's "scores".

points JSON: [{"t": 0, "x": 12.5, "y": 40.0}, ...] or [[t, x, y], ...] in the video's own pixels.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

import difftrack
from difftrack.backbones import DEFAULT_BACKBONE, known_adapter
from difftrack.commands import check_layers_before_loading, chosen_layers
from difftrack.errors import UserError
from difftrack.evaluation.protocols import PROTOCOL_SIZE
from difftrack.evaluation.queries import query_grid
from difftrack.formatting import format_number
from difftrack.io import atomic_path, json_safe, load_points, load_tracks, read_video
from difftrack.io import write_video
from difftrack.noising import NOISE_MODES, check_step
from difftrack.options import add_device_arguments, backbone_options, check_query_memory, integer, number
from difftrack.options import output_prefix, positive, prefix_for, seed, tracking_bytes_per_query
from difftrack.tracker_config import TEMPORAL_MODES, TRACKERS, TrackerConfig
from difftrack.tracker_inputs import check_points


DEFAULT_GRID = 8


def add_arguments(p):
    p.add_argument("video", help="input video file (mp4, avi, ... anything OpenCV reads), or a folder of its frames "
                                 "as PNG or JPEG files in name order (taken as 24 frames/s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--points", help="JSON file of query points (t, x, y) in pixels")
    src.add_argument("--grid", type=integer(min=1), metavar="N",
                     help=f"query an N x N grid of points on --grid-frame (default without --points: {DEFAULT_GRID})")
    src.add_argument("--gt", metavar="GT.npz",
                     help="ground truth in this command's npz format (tracks, visibility, queries; `difftrack synth` "
                          "writes one): track its queries and score the tracks against it")
    p.add_argument("--grid-frame", type=integer(min=0), default=0, help="frame of the --grid queries (default 0)")
    p.add_argument("--model", default=DEFAULT_BACKBONE,
                   help=f"registry name, hub id or local pipeline dir (default {DEFAULT_BACKBONE}; see `difftrack models`)")
    add_device_arguments(p)
    p.add_argument("--tracker", choices=TRACKERS, default=None,
                   help="paper: the paper's procedure as its release runs it (frame 0 matched directly to every frame "
                        "in chunks spread over the video, clean latents, the method's layer and step, every point "
                        "visible); difftrack: difftrack's own (windows chained from frame to frame, a Viterbi pass, "
                        "occlusion). Default: the model's (`difftrack models`): paper for real checkpoints, "
                        "difftrack for the embedded model, whose settings were calibrated on it")
    p.add_argument("--layers", nargs="+", default=None, metavar="L",
                   help="attention layers whose q/k are matched (0-based); `auto` reads --recommendation; "
                        "default: the model's own tracking layers")
    p.add_argument("--recommendation", help="recommendation.json (or its analysis directory) for --layers auto; "
                                            "default: the one shipped with the model, if any")
    p.add_argument("--steps", nargs="+", type=integer(min=0), default=None,
                   help="denoising step indices to read (of --num-steps); several are averaged")
    p.add_argument("--num-steps", type=integer(min=1), default=None, help="length of the sampler schedule the steps index")
    paper = p.add_argument_group(
        "the paper's tracker (--tracker paper)",
        "Forwards: one per chunk and step for each distinct query frame (about T / (chunk - 1) + chunk chunks "
        "each): queries on many different frames multiply the work, frame-0 queries do not.")
    paper.add_argument("--release-quirks", action="store_true",
                       help="the release's own arithmetic: logits scaled by 1/sqrt(heads), token j read at pixel 16 j "
                            "with its 0.7%% coordinate shrink (default: both fixed)")
    paper.add_argument("--vae-sample-seed", type=seed, default=None,
                       help="encode with the VAE posterior's sample from this seed, as the release does (default: "
                            "the posterior's mode)")
    paper.add_argument("--occlusion", action="store_true",
                       help="add difftrack's occlusion calls (cycle error and peak); positions do not change")
    paper.add_argument("--chunk", type=integer(min=2), default=None,
                       help="frames per forward, the query frame included (default: the paper's, 13 for CogVideoX)")
    paper.add_argument("--height", type=positive, default=None,
                       help="height frames are resized to (default: the paper's size for the model, its trained size)")
    paper.add_argument("--width", type=positive, default=None,
                       help="width frames are resized to (default: the paper's size for the model, its trained size)")
    own = p.add_argument_group(
        "difftrack's tracker (--tracker difftrack)",
        "Defaults left open take the model's calibrated settings (the embedded model's) or, for a model difftrack "
        "was not calibrated on, the paper's clean latents and per-frame argmax.")
    own.add_argument("--noise", choices=NOISE_MODES, default=None,
                     help="add noise at the step, feed clean latents, or invert to the step")
    own.add_argument("--window", type=integer(min=2), default=None, help="frames per forward (default: the model's window)")
    own.add_argument("--temporal", choices=TEMPORAL_MODES, default=None,
                     help="viterbi: choose each frame's position among its best candidates with a motion prior and "
                          "an occluded state; none: per-frame argmax")
    own.add_argument("--motion-sigma", type=number(min=0, min_inclusive=False), default=None,
                   help="expected motion in tokens per frame of the viterbi pass (default 2.0)")
    own.add_argument("--background-weight", type=number(min=0, max=1), default=None,
                   help="weight of the scene's dominant motion (a camera pan, estimated from the costs of all the "
                        f"frame's tokens) in the viterbi pass's motion prior; 0 turns it off (default: the model's "
                        "calibrated value, else 0)")
    own.add_argument("--presence-weight", type=number(min=0), default=None,
                   help="weight of log(presence) on visible states of the viterbi pass: presence is a frame's share "
                        "of the point's joint attention against the best frame's; 0 turns it off (default: the model's "
                        "calibrated value, else 0)")
    own.add_argument("--candidates", type=positive, default=None, help="tokens per frame the viterbi pass picks from "
                                                                      f"(default {TrackerConfig.candidates})")
    own.add_argument("--noise-draws", type=positive, default=None,
                   help="average the costs over this many noise draws (one forward each; default 1)")
    own.add_argument("--refine-window", type=integer(min=0), default=None,
                   help="sub-token position: 0 (default) keeps the point's own place inside its matched token; r >= 1 "
                        "soft-argmax in a (2r+1)^2-token window")
    own.add_argument("--no-bidirectional", action="store_true", help="match one direction only (C[s->j])")
    p.add_argument("--cycle-threshold", type=number(min=0), default=None,
                   help="forward-backward error in tokens above which a point is called occluded")
    own.add_argument("--seed", type=seed, default=None, help="seed of the added noise (default 0)")
    p.add_argument("--out", type=output_prefix, help="output path prefix, or an existing directory to write "
                                                     "<stem>_tracks.* into (default: next to the video, <stem>_tracks)")
    p.add_argument("--allow-short-video", action="store_true",
                   help="track the frames a damaged or cut-short video file decodes (default: refuse it)")
    p.add_argument("--no-video", action="store_true", help="skip the overlay MP4")


# difftrack's own tracker's options (TrackerConfig fields), and the paper tracker's flags
DIFFTRACK_OPTIONS = ("noise", "window", "temporal", "seed", "noise_draws", "motion_sigma", "background_weight",
                     "presence_weight", "candidates", "refine_window")
PAPER_FLAGS = ("release_quirks", "vae_sample_seed", "occlusion", "chunk", "height", "width")


def check_tracker_options(args, kind: str) -> None:
    """Refuse, in one line, an option that the chosen tracker does not have (it would silently do nothing)."""
    if kind == "paper":
        given = [n for n in DIFFTRACK_OPTIONS if getattr(args, n) is not None] + (
            ["no_bidirectional"] if args.no_bidirectional else [])
        other = "difftrack"
    else:
        given = [n for n in PAPER_FLAGS if getattr(args, n) not in (None, False)]
        other = "paper"
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        verb = "belongs" if len(given) == 1 else "belong"
        raise UserError(f"{flags} {verb} to --tracker {other}, but this run uses the {kind} tracker"
                        f"{'' if args.tracker else ' (the model default)'}; add --tracker {other} or drop {flags}")


def run(args):
    from difftrack.drawing import draw_tracks

    video, fps = read_video(args.video, allow_short=args.allow_short_video)
    num_frames, height, width = video.shape[:3]
    # What can be checked without the model, before it loads: the tracker's options (the model's default tracker
    # is known from its registry entry or model_index.json), layers and steps, and the memory the queries take.
    adapter = known_adapter(args.model)
    kind = args.tracker or (adapter.default_tracker if adapter is not None else None)
    if kind is not None:
        check_tracker_options(args, kind)
    if (args.height is None) != (args.width is None):
        raise UserError("give --height and --width together (or neither, for the paper's size)")
    check_layers_before_loading(args.model, args.layers, "--layers")
    for step in args.steps or ():
        if args.num_steps:  # without it the range is the model's own schedule
            check_step(step, args.num_steps)
    per_query = tracking_bytes_per_query(num_frames, args.candidates or TrackerConfig.candidates,
                                         args.temporal != "none", not args.no_bidirectional, args.window)
    if not (args.gt or args.points):
        check_query_memory((args.grid or DEFAULT_GRID) ** 2, per_query, f"--grid {args.grid or DEFAULT_GRID}",
                           lambda largest: f"use --grid {math.isqrt(largest)} or less")
    truth = None
    if args.gt:
        *truth, queries = load_tracks(args.gt, num_frames)
        if queries is None:
            raise UserError(f"ground truth {args.gt} holds no 'queries' (N, 3) as (t, x, y); write it with "
                            f"`difftrack synth` or add the queries, one per track")
    elif args.points:
        queries = load_points(args.points)
    else:
        if not 0 <= args.grid_frame < num_frames:
            raise UserError(f"--grid-frame {args.grid_frame} is out of range; the video has frames 0..{num_frames - 1}")
        queries = query_grid(args.grid or DEFAULT_GRID, height, width, args.grid_frame).astype(np.float32)
    check_points(queries, num_frames, height, width)
    if args.gt or args.points:
        check_query_memory(len(queries), per_query, args.gt or args.points,
                           lambda largest: f"track at most {largest:,} points at a time")
    out = prefix_for(args.out, args.video, "_tracks")

    from difftrack.tracker import create_tracker

    backbone = difftrack.create_backbone(args.model, **backbone_options(args))
    layers, rec_steps, rec_num_steps = chosen_layers(args.layers, "--layers", args.recommendation, backbone)
    if args.steps is None and rec_steps is not None:
        options_steps, options_num_steps = rec_steps, rec_num_steps
    else:
        options_steps, options_num_steps = args.steps, args.num_steps
    if kind is None:  # a model whose adapter is known only now that it has loaded
        kind = backbone.default_tracker
        check_tracker_options(args, kind)
    options = {"layers": layers, "steps": options_steps, "num_steps": options_num_steps}
    if args.cycle_threshold is not None:
        options["cycle_threshold"] = args.cycle_threshold
    if kind == "paper":
        options.update(release_quirks=args.release_quirks, vae_sample_seed=args.vae_sample_seed,
                       occlusion=args.occlusion, chunk=args.chunk,
                       size=None if args.height is None else (args.height, args.width))
    else:
        options["bidirectional"] = not args.no_bidirectional
        for name in DIFFTRACK_OPTIONS:
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
    tracker = create_tracker(kind, backbone, **options)
    start = time.perf_counter()
    tracks, visible = tracker(video, queries, progress=True)
    seconds = time.perf_counter() - start

    meta = {**tracker.meta(), "difftrack_version": difftrack.__version__, "seconds": round(seconds, 3),
            "video": str(args.video), "frames": num_frames, "height": height, "width": width}
    scores = None
    if truth is not None:
        from difftrack.baselines import BASELINES
        from difftrack.evaluation.scoring import LabelledVideo, recorded, score_tracker

        gt_tracks, gt_visible = truth
        labelled = LabelledVideo(video, gt_tracks.transpose(1, 0, 2), ~gt_visible.T, queries=queries)
        scorers = {tracker.name: recorded(tracks, visible),
                   **{name: BASELINES[name] for name in ("zero_motion", "lucas_kanade")}}
        scores = {}
        for name, scorer in scorers.items():
            score = score_tracker(scorer, labelled, "first", score_size=PROTOCOL_SIZE)
            scores[name] = {**score.metrics, "median_error_px": score.videos[0].median_error()}
    overlay = None if args.no_video else draw_tracks(video, tracks, visible, queries)
    # Write everything to temporary names first, so a failure leaves no partial set of outputs.
    with atomic_path(out.with_suffix(".npz")) as npz_tmp, atomic_path(out.with_suffix(".json")) as json_tmp:
        np.savez(npz_tmp, tracks=tracks.astype(np.float32), visibility=visible, queries=queries.astype(np.float32))
        json_tmp.write_text(json.dumps({"tracks": tracks.tolist(), "visibility": visible.tolist(),
                                        "queries": queries.tolist(), "meta": meta,
                                        **({"scores": json_safe(scores)} if scores else {})}))
        if overlay is not None:
            write_video(out.with_suffix(".mp4"), overlay, fps)
    print(f"tracked {len(queries)} points over {num_frames} frames in {seconds:.1f} s "
          f"({num_frames / max(seconds, 1e-9):.2f} frames/s, {meta['forwards']} forwards, {tracker.name} tracker) -> "
          f"{out.with_suffix('.npz')}, {out.with_suffix('.json')}" + ("" if args.no_video else f", {out.with_suffix('.mp4')}"))
    if scores:
        frames = sorted({round(q * (num_frames - 1) / 3) for q in range(4)})
        print(f"against {args.gt} (x100: average Jaccard / delta_avg / occlusion accuracy; median error in px of the "
              f"visible points at frames {', '.join(map(str, frames))}):")
        for name, metrics in scores.items():
            errors = " ".join(format_number(metrics["median_error_px"][f], ".1f") for f in frames)
            print(f"  {name:12s} {format_number(metrics['average_jaccard'], '.1f', scale=100):>5s} / "
                  f"{format_number(metrics['average_pts_within_thresh'], '.1f', scale=100):>5s} / "
                  f"{format_number(metrics['occlusion_accuracy'], '.1f', scale=100):>5s}   {errors}")

