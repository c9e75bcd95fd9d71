"""Track points through a video zero-shot with a video DiT's attention.

Writes OUT.npz (tracks (T, N, 2) pixel x, y; visibility (T, N); queries (N, 3) as t, x, y),
OUT.json (the same plus meta) and OUT.mp4 (an overlay with coloured trails; filled dots = visible,
rings = predicted occluded).

The video is cut into windows of --window frames (one frame shared between neighbours); one forward
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
import time
from pathlib import Path

import numpy as np

import difftrack
from difftrack.backbones import DEFAULT_BACKBONE
from difftrack.errors import UserError
from difftrack.data.tapvid import PROTOCOL_SIZE
from difftrack.io import atomic_path, check_points, format_number, json_safe, load_points, load_tracks, read_video
from difftrack.io import write_video
from difftrack.metrics import compute_tapvid_metrics
from difftrack.noising import NOISE_MODES
from difftrack.options import add_device_arguments, backbone_options, check_output_file, integer, number
from difftrack.options import output_prefix, positive, seed
from difftrack.tracker import TEMPORAL_MODES, TrackerConfig


DEFAULT_GRID = 8


def add_arguments(p):
    p.add_argument("video", help="input video file (mp4, avi, ... anything OpenCV reads)")
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
    p.add_argument("--layers", nargs="+", default=None, metavar="L",
                   help="attention layers whose q/k are matched (0-based); `auto` reads --recommendation; "
                        "default: the model's own tracking layers")
    p.add_argument("--recommendation", help="recommendation.json (or its analysis directory) for --layers auto; "
                                            "default: the one shipped with the model, if any")
    p.add_argument("--steps", nargs="+", type=integer(min=0), default=None,
                   help="denoising step indices to read (of --num-steps); several are averaged")
    p.add_argument("--num-steps", type=integer(min=1), default=None, help="length of the sampler schedule the steps index")
    p.add_argument("--noise", choices=NOISE_MODES, default="add",
                   help="add noise at the step (default), feed clean latents, or invert to the step")
    p.add_argument("--window", type=integer(min=2), default=None, help="frames per forward (default: the model's window)")
    p.add_argument("--temporal", choices=TEMPORAL_MODES, default="viterbi",
                   help="viterbi (default): choose each frame's position among its best candidates with a motion "
                        "prior and an occluded state; none: per-frame argmax")
    p.add_argument("--motion-sigma", type=number(min=0, min_inclusive=False), default=None,
                   help="expected motion in tokens per frame of the viterbi pass (default 2.0)")
    p.add_argument("--background-weight", type=number(min=0, max=1), default=None,
                   help="weight of the scene's dominant motion (a camera pan, estimated from the costs of all the "
                        f"frame's tokens) in the viterbi pass's motion prior; 0 turns it off (default "
                        f"{TrackerConfig.background_weight})")
    p.add_argument("--presence-weight", type=number(min=0), default=None,
                   help="weight of log(presence) on visible states of the viterbi pass: presence is a frame's share "
                        "of the point's joint attention against the best frame's; 0 turns it off (default "
                        f"{TrackerConfig.presence_weight})")
    p.add_argument("--candidates", type=positive, default=None, help="tokens per frame the viterbi pass picks from "
                                                                      f"(default {TrackerConfig.candidates})")
    p.add_argument("--noise-draws", type=positive, default=1,
                   help="average the costs over this many noise draws (one forward each; default 1)")
    p.add_argument("--refine-window", type=integer(min=0), default=None,
                   help="sub-token position: 0 (default) keeps the point's own place inside its matched token; r >= 1 "
                        "soft-argmax in a (2r+1)^2-token window")
    p.add_argument("--no-bidirectional", action="store_true", help="match one direction only (C[s->j])")
    p.add_argument("--cycle-threshold", type=number(min=0), default=None,
                   help="forward-backward error in tokens above which a point is called occluded")
    p.add_argument("--seed", type=seed, default=0, help="seed of the added noise")
    p.add_argument("--out", type=output_prefix, help="output path prefix (default: next to the video, <stem>_tracks)")
    p.add_argument("--no-video", action="store_true", help="skip the overlay MP4")


def grid_queries(n: int, frame: int, height: int, width: int) -> np.ndarray:
    ys, xs = np.meshgrid((np.arange(n) + 0.5) / n * height, (np.arange(n) + 0.5) / n * width, indexing="ij")
    return np.stack([np.full(n * n, frame, np.float32), xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def resolve_layers(values, recommendation, backbone):
    """(layers, steps, num_steps) from --layers; steps and num_steps come only from a recommendation."""
    if values is None:
        return None, None, None
    if values == ["auto"]:
        return backbone.recommendation(recommendation)
    try:
        return [int(v) for v in values], None, None
    except ValueError:
        raise UserError(f"--layers takes integers or `auto`, got {' '.join(values)}") from None


def run(args):
    from difftrack.tracker import DiffTracker
    from difftrack.drawing import draw_tracks

    video, fps = read_video(args.video)
    num_frames, height, width = video.shape[:3]
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
        queries = grid_queries(args.grid or DEFAULT_GRID, args.grid_frame, height, width)
    check_points(queries, num_frames, height, width)
    out = Path(args.out) if args.out else check_output_file(Path(args.video).with_name(Path(args.video).stem + "_tracks"), prefix=True)

    backbone = difftrack.create_backbone(args.model, **backbone_options(args))
    layers, rec_steps, rec_num_steps = resolve_layers(args.layers, args.recommendation, backbone)
    if args.steps is None and rec_steps is not None:
        options_steps, options_num_steps = rec_steps, rec_num_steps
    else:
        options_steps, options_num_steps = args.steps, args.num_steps
    options = {"layers": layers, "steps": options_steps, "num_steps": options_num_steps,
               "noise": args.noise, "window": args.window, "bidirectional": not args.no_bidirectional,
               "seed": args.seed}
    options.update(temporal=args.temporal, noise_draws=args.noise_draws)
    for name in ("cycle_threshold", "motion_sigma", "background_weight", "presence_weight", "candidates",
                 "refine_window"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    tracker = DiffTracker(backbone, **options)
    start = time.perf_counter()
    tracks, visible = tracker(video, queries, progress=True)
    seconds = time.perf_counter() - start

    meta = {**tracker.meta(), "difftrack_version": difftrack.__version__, "seconds": round(seconds, 3),
            "video": str(args.video), "frames": num_frames, "height": height, "width": width}
    scores = None
    if truth is not None:
        from difftrack.baselines import BASELINES

        predictions = {"difftrack": (tracks, visible),
                       **{name: BASELINES[name](video, queries) for name in ("zero_motion", "lucas_kanade")}}
        scores = score_tracks(queries, *truth, predictions, height, width)
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
          f"({num_frames / max(seconds, 1e-9):.2f} frames/s, {tracker.stats.forwards} forwards) -> "
          f"{out.with_suffix('.npz')}, {out.with_suffix('.json')}" + ("" if args.no_video else f", {out.with_suffix('.mp4')}"))
    if scores:
        print(f"against {args.gt} (x100: average Jaccard / delta_avg / occlusion accuracy):")
        for name, metrics in scores.items():
            print(f"  {name:12s} {format_number(metrics['average_jaccard'], '.1f', scale=100):>5s} / "
                  f"{format_number(metrics['average_pts_within_thresh'], '.1f', scale=100):>5s} / "
                  f"{format_number(metrics['occlusion_accuracy'], '.1f', scale=100):>5s}")


def score_tracks(queries, gt_tracks, gt_visible, predictions: dict, height: int, width: int) -> dict:
    """TAP-Vid metrics ('first' queries, at 256x256) of each named (tracks (T, N, 2), visibility (T, N))."""
    scale = np.float32([PROTOCOL_SIZE / width, PROTOCOL_SIZE / height])
    protocol_queries = np.concatenate([queries[:, :1], queries[:, 1:] * scale], axis=1)
    return {name: compute_tapvid_metrics(protocol_queries, ~gt_visible.T, gt_tracks.transpose(1, 0, 2) * scale,
                                         ~np.asarray(visible, bool).T, np.asarray(tracks).transpose(1, 0, 2) * scale,
                                         "first")
            for name, (tracks, visible) in predictions.items()}
