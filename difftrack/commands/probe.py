"""Probe a diffusion model's features by block and noise level: extraction, label propagation, image vs video, sweeps, pictures.

sub-commands:
  features   activations (q, k, attention feature, block output) of any block at any noise step -> .npz
  propagate  training-free propagation of first-frame masks / keypoints by feature similarity
  compare    image versus video: label propagation, zero-shot tracking and a linear semantic probe on the
             embedded video model and its image twin (generator videos with exact ground truth)
  sweep      block x noise-level tables and heat maps of every task
  pictures   PCA-as-RGB and K-means (K=10) cluster pictures per frame (PNG strips, MP4), incl. the brick-wall pan

examples:
  difftrack probe features --model tiny-video --video clip.mp4 --block 3 --noise-step 40 --kinds query key block
  difftrack probe propagate --model tiny-video --video clip.mp4 --masks first_frame.png --out runs/prop
  difftrack probe propagate --model tiny-image --synthetic 6 --block 2
  difftrack probe compare --block 3 --noise-step 40 --out results/probe/compare
  difftrack probe sweep --models tiny-video tiny-image --blocks 1 2 3 4 --noise-steps 10 25 40 --out results/probe/sweep
  difftrack probe pictures --models tiny-video tiny-image --control --out results/probe/pictures

Noise steps index a sampler schedule of --num-steps (default 50): step 0 is the noisiest, the last the cleanest.
Masks: a label PNG (palette or grey, 0 = background, 1..K = instances) or .npy/.npz of integer ids (H, W) at the
video's own size. Keypoints: JSON [[x, y], ...] or [{"x": .., "y": ..}, ...] in the video's pixels on frame 0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import difftrack
from difftrack.backbones import DEFAULT_BACKBONE, DEFAULT_IMAGE_TWIN, check_known_layers
from difftrack.errors import UserError
from difftrack.evaluation.seeds import PROBE_EVAL_SEED_START
from difftrack.drawing import draw_labels_and_points, readable_scale
from difftrack.io import atomic_directory, atomic_path, read_keypoints, read_label_map, read_video, write_json
from difftrack.io import write_video
from difftrack.noising import NOISE_MODES, check_noising
from difftrack.options import add_device_arguments, backbone_options, check_output_dir, check_output_file, integer
from difftrack.options import number, output_dir, output_file, output_prefix, positive, prefix_for, seed
from difftrack.probe import TASKS

DEFAULT_STEP = 40
DEFAULT_SWEEP_STEPS = (10, 25, 40)
SYNTHETIC_FRAMES = 8  # the embedded models' clip length


def add_arguments(p):
    sub = p.add_subparsers(dest="probe_command", metavar="SUBCOMMAND", required=True)

    f = sub.add_parser("features", help="activations of blocks at a noise step -> .npz with grid geometry")
    _model_args(f, multi_block=True)
    f.add_argument("--video", required=True, help="input video (anything OpenCV reads, or a folder of frames)")
    _allow_short_arg(f)
    f.add_argument("--kinds", nargs="+", default=["block"], metavar="KIND",
                   help="query, key, feature (attention output before to_out), block (block output); default block")
    f.add_argument("--out", type=output_file(".npz"), help="output .npz (default: next to the video, <stem>_features.npz)")
    f.set_defaults(_probe=run_features)

    g = sub.add_parser("propagate", help="propagate first-frame masks / keypoints by feature similarity")
    _model_args(g)
    _kind_arg(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="input video; give --masks and/or --keypoints for its frame 0")
    _allow_short_arg(g)
    src.add_argument("--synthetic", type=positive, metavar="N", help="score on N held-out generator videos instead")
    g.add_argument("--masks", help="frame-0 instance ids: label PNG, .npy or .npz (H, W), 0 = background")
    g.add_argument("--keypoints", help="frame-0 keypoints JSON: [[x, y], ...] or [{\"x\": .., \"y\": ..}, ...]")
    _propagation_args(g)
    g.add_argument("--out", type=output_prefix, help="output prefix, or an existing directory to write "
                                                     "<stem>_propagated.* into (default: next to the video "
                                                     "<stem>_propagated, or propagation_<model> for --synthetic)")
    g.set_defaults(_probe=run_propagate)

    c = sub.add_parser("compare", help="image versus video on every task at one block and noise step")
    c.add_argument("--video-model", default=DEFAULT_BACKBONE, help=f"the video model (default {DEFAULT_BACKBONE})")
    c.add_argument("--image-model", default=DEFAULT_IMAGE_TWIN, help=f"its image twin (default {DEFAULT_IMAGE_TWIN})")
    c.add_argument("--block", type=integer(min=0), default=None, help="block index (default: the middle block)")
    c.add_argument("--noise-step", type=integer(min=0), default=DEFAULT_STEP, help=f"step index (default {DEFAULT_STEP})")
    c.add_argument("--from-sweep", metavar="DIR",
                   help="take both models' records at --block / --noise-step from a sweep's sweep.json instead of "
                        "recomputing them (the setting flags are then read from the sweep)")
    _study_args(c, default_out="runs/probe-compare")
    c.set_defaults(_probe=run_compare)

    s = sub.add_parser("sweep", help="block x noise-level tables and plots of every task")
    s.add_argument("--models", nargs="+", default=[DEFAULT_BACKBONE, DEFAULT_IMAGE_TWIN], help="models to sweep")
    s.add_argument("--blocks", nargs="+", type=integer(min=0), default=None, help="block indices (default: all)")
    s.add_argument("--noise-steps", nargs="+", type=integer(min=0), default=list(DEFAULT_SWEEP_STEPS),
                   help=f"step indices (default {' '.join(map(str, DEFAULT_SWEEP_STEPS))})")
    _study_args(s)
    s.set_defaults(_probe=run_sweep)

    q = sub.add_parser("pictures", help="PCA-as-RGB and K-means cluster pictures of features per frame")
    q.add_argument("--models", nargs="+", default=[DEFAULT_BACKBONE, DEFAULT_IMAGE_TWIN], help="models to picture")
    add_device_arguments(q)
    q.add_argument("--block", type=integer(min=0), default=None, help="block index (default: the middle block)")
    q.add_argument("--noise-step", type=integer(min=0), default=DEFAULT_STEP, help=f"step index (default {DEFAULT_STEP})")
    q.add_argument("--num-steps", type=positive, default=50, help="length of the schedule --noise-step indexes")
    q.add_argument("--noise", choices=NOISE_MODES, default="add", help="add noise (default), clean, or invert")
    q.add_argument("--seed", type=seed, default=0, help="seed of the added noise and of K-means")
    _kind_arg(q)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="input video")
    _allow_short_arg(q)
    src.add_argument("--control", action="store_true", help="the camera-pans-over-a-uniform-brick-wall control clip")
    src.add_argument("--synthetic", type=seed, metavar="SEED", help="generator clip SEED")
    q.add_argument("--frames", type=integer(min=2), default=8, help="frames of generator clips (default 8)")
    q.add_argument("--clusters", type=positive, default=10, help="K of K-means (default 10)")
    q.add_argument("--out", required=True, type=output_dir, help="output directory")
    q.set_defaults(_probe=run_pictures)


def _model_args(p, multi_block: bool = False):
    p.add_argument("--model", default=DEFAULT_BACKBONE, help="registry name, hub id or local dir")
    add_device_arguments(p)
    if multi_block:
        p.add_argument("--block", nargs="+", type=integer(min=0), required=True, help="block index(es), 0-based")
    else:
        p.add_argument("--block", type=integer(min=0), default=None, help="block index, 0-based (default: the middle block)")
    p.add_argument("--noise-step", type=integer(min=0), default=DEFAULT_STEP, help=f"step index (default {DEFAULT_STEP})")
    p.add_argument("--num-steps", type=positive, default=50, help="length of the schedule --noise-step indexes (default 50)")
    p.add_argument("--noise", choices=NOISE_MODES, default="add", help="add noise (default), clean, or invert")
    p.add_argument("--seed", type=seed, default=0, help="seed of the added noise")
    p.add_argument("--per-frame", action=argparse.BooleanOptionalAction, default=None,
                   help="one forward per frame (default: exactly for image models)")
    p.add_argument("--window", type=integer(min=2), default=None, help="frames per forward of a video model (default: its own)")


def _allow_short_arg(p):
    p.add_argument("--allow-short-video", action="store_true",
                   help="use the frames a damaged or cut-short video file decodes (default: refuse it)")


def _kind_arg(p):
    p.add_argument("--kind", default="block", choices=["query", "key", "feature", "block"],
                   help="activation used (default block output)")


def _propagation_args(p):
    p.add_argument("--temperature", type=number(min=0, min_inclusive=False), default=None, help="softmax temperature (default 0.1)")
    p.add_argument("--topk", type=positive, default=None, help="most similar context tokens kept (default 15)")
    p.add_argument("--radius", type=number(min=0, min_inclusive=False), default=None,
                   help="spatial radius in tokens (default 3 for masks, 2 for keypoints: the DAVIS / JHMDB protocol's 10 / 5 scaled "
                        "to a 16-token grid)")
    p.add_argument("--context", type=integer(min=0), default=None,
                   help="previous frames used besides frame 0 (default 3: the DAVIS / JHMDB protocol's 28 / 14 scaled to 8 frames)")


def _study_args(p, default_out: str | None = None):
    add_device_arguments(p)
    p.add_argument("--num-steps", type=positive, default=50, help="length of the schedule the steps index (default 50)")
    p.add_argument("--noise", choices=NOISE_MODES, default="add", help="add noise (default), clean, or invert")
    p.add_argument("--seed", type=seed, default=0, help="seed of the added noise")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"subset of {', '.join(TASKS)}")
    _kind_arg(p)
    p.add_argument("--eval-videos", type=positive, default=6, help="held-out generator videos scored (default 6)")
    p.add_argument("--train-videos", type=integer(min=0), default=24, help="generator videos the probe trains on (default 24)")
    p.add_argument("--eval-seed-start", type=seed, default=PROBE_EVAL_SEED_START,
                   help=f"first held-out video seed (default {PROBE_EVAL_SEED_START})")
    p.add_argument("--train-seed-start", type=seed, default=0, help="first training video seed (default 0)")
    p.add_argument("--frames", type=integer(min=2), default=8, help="frames per generator video (default 8)")
    _propagation_args(p)
    p.add_argument("--out", required=default_out is None, default=default_out, type=output_dir,
                   help="output directory" + (f" (default {default_out})" if default_out else ""))


def run(args):
    args._probe(args)


# ----- helpers -------------------------------------------------------------------------------

def _load(model, args):
    return difftrack.create_backbone(model, **backbone_options(args))


def _check_blocks(models, blocks) -> None:
    """Block indices against each model's layer count where it is known without loading the model."""
    for model in models:
        check_known_layers(model, [b for b in blocks if b is not None])


def _block(backbone, block):
    return backbone.num_layers // 2 if block is None else block


def _check_study(args):
    check_noising(args.noise, [args.noise_step] if hasattr(args, "noise_step") else args.noise_steps, args.num_steps)
    train = set(range(args.train_seed_start, args.train_seed_start + args.train_videos))
    held_out = set(range(args.eval_seed_start, args.eval_seed_start + args.eval_videos))
    if train & held_out:
        raise UserError(f"training seeds {args.train_seed_start}..{args.train_seed_start + args.train_videos - 1} overlap "
                        f"the held-out seeds {args.eval_seed_start}..{args.eval_seed_start + args.eval_videos - 1}; "
                        f"move --train-seed-start or --eval-seed-start")


def _configs(args):
    from dataclasses import replace

    from difftrack.probe.propagation import KEYPOINT_DEFAULTS, MASK_DEFAULTS

    overrides = {k: getattr(args, k) for k in ("temperature", "topk", "radius", "context")
                 if getattr(args, k) is not None}
    return replace(MASK_DEFAULTS, **overrides), replace(KEYPOINT_DEFAULTS, **overrides)


def _options(args):
    from difftrack.probe.propagation import check_config
    from difftrack.probe.tasks import TaskOptions, check_tasks

    masks, keypoints = _configs(args)
    for cfg in (masks, keypoints):
        check_config(cfg, args.frames)
    return TaskOptions(tasks=check_tasks(args.tasks), kind=args.kind, mask_config=masks, keypoint_config=keypoints,
                       num_steps=args.num_steps, noise=args.noise, seed=args.seed)


def _study_clips(args):
    from difftrack.probe.tasks import make_clips

    eval_seeds = list(range(args.eval_seed_start, args.eval_seed_start + args.eval_videos))
    train_seeds = list(range(args.train_seed_start, args.train_seed_start + args.train_videos))
    train = make_clips(train_seeds, args.frames) if "semantic" in args.tasks else []
    return eval_seeds, train_seeds, make_clips(eval_seeds, args.frames), train


def _seed_range(seeds):
    return f"{seeds[0]}..{seeds[-1]}" if seeds else "none"


# ----- features ------------------------------------------------------------------------------

def run_features(args):
    _check_blocks([args.model], args.block)
    video, _ = read_video(args.video, allow_short=args.allow_short_video)
    out = Path(args.out) if args.out else check_output_file(
        Path(args.video).with_name(Path(args.video).stem + "_features.npz"))

    from difftrack.probe.features import FeatureSpec, check_spec, extract_features

    backbone = _load(args.model, args)
    spec = FeatureSpec(blocks=tuple(args.block), kinds=tuple(args.kinds), step=args.noise_step,
                       num_steps=args.num_steps, noise=args.noise, seed=args.seed, per_frame=args.per_frame,
                       window=args.window)
    check_spec(backbone, spec)
    start = time.perf_counter()
    features = extract_features(backbone, video, spec, progress=True)
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez(tmp, **features.to_npz_arrays())
    shapes = ", ".join(f"{k}_{b} {tuple(v.shape)}" for (k, b), v in features.maps.items())
    print(f"{len(video)} frames, grid {features.grid[0]}x{features.grid[1]}, timestep {features.timestep:g}, "
          f"{time.perf_counter() - start:.1f} s: {shapes} -> {out}")


# ----- propagate -----------------------------------------------------------------------------

def run_propagate(args):
    _check_blocks([args.model], [args.block])

    from difftrack.probe.features import FeatureSpec, check_spec, extract_features
    from difftrack.probe.propagation import (
        check_config,
        check_keypoints,
        check_label_map,
        propagate_keypoints,
        propagate_mask,
    )

    mask_cfg, kp_cfg = _configs(args)
    if args.synthetic is not None:
        return _propagate_synthetic(args, mask_cfg, kp_cfg)
    if not args.masks and not args.keypoints:
        raise UserError("give --masks and/or --keypoints for frame 0 of --video")
    video, fps = read_video(args.video, allow_short=args.allow_short_video)
    size = video.shape[1:3]
    label_map = check_label_map(read_label_map(args.masks), size) if args.masks else None
    points = check_keypoints(read_keypoints(args.keypoints), size) if args.keypoints else None
    for cfg, used in ((mask_cfg, label_map is not None), (kp_cfg, points is not None)):
        if used:
            check_config(cfg, len(video))
    out = prefix_for(args.out, args.video, "_propagated")
    backbone = _load(args.model, args)
    block = _block(backbone, args.block)
    spec = FeatureSpec(blocks=(block,), kinds=(args.kind,), step=args.noise_step, num_steps=args.num_steps,
                       noise=args.noise, seed=args.seed, per_frame=args.per_frame, window=args.window)
    check_spec(backbone, spec)
    fmap = extract_features(backbone, video, spec, progress=True)[(args.kind, block)]
    arrays = {}
    ids = propagate_mask(fmap, label_map, size, mask_cfg) if label_map is not None else None
    tracks = propagate_keypoints(fmap, points, size, kp_cfg) if points is not None else None
    if ids is not None:
        arrays["masks"] = ids.astype(np.int32)
    if tracks is not None:
        arrays["keypoints"] = tracks
    scale = readable_scale(*size)
    with atomic_path(out.with_suffix(".npz")) as npz_tmp:
        np.savez(npz_tmp, **arrays)
        write_video(out.with_suffix(".mp4"), draw_labels_and_points(video, ids, tracks, scale), fps)
    print(f"propagated {'masks ' if ids is not None else ''}{'keypoints ' if tracks is not None else ''}"
          f"through {len(video)} frames with {backbone.name} block {block} step {args.noise_step} -> "
          f"{out.with_suffix('.npz')}, {out.with_suffix('.mp4')}")


def _propagate_synthetic(args, mask_cfg, kp_cfg):
    from difftrack.probe.propagation import check_config
    from difftrack.probe.tasks import TaskOptions, evaluate_grid, make_clips

    for cfg in (mask_cfg, kp_cfg):
        check_config(cfg, SYNTHETIC_FRAMES)
    out = check_output_file(Path(args.out or f"propagation_{args.model.replace('/', '_')}").with_suffix(".json"))
    backbone = _load(args.model, args)
    block = _block(backbone, args.block)
    backbone.check_layers([block])
    options = TaskOptions(tasks=("masks", "keypoints"), kind=args.kind, mask_config=mask_cfg, keypoint_config=kp_cfg,
                          num_steps=args.num_steps, noise=args.noise, seed=args.seed, window=args.window)
    seeds = list(range(PROBE_EVAL_SEED_START, PROBE_EVAL_SEED_START + args.synthetic))
    check_noising(args.noise, [args.noise_step], args.num_steps)
    record = evaluate_grid(backbone, [block], [args.noise_step], make_clips(seeds, SYNTHETIC_FRAMES), [], options)[0]
    write_json(out, {"seeds": seeds, **record})
    print(" ".join(f"{k}={v:.3f}" for k, v in record.items() if isinstance(v, float) and k != "timestep") + f" -> {out}")


# ----- compare and sweep ---------------------------------------------------------------------

def _setting(args, eval_seeds, train_seeds):
    return {"num_steps": args.num_steps, "noise": args.noise, "seed": args.seed, "kind": args.kind,
            "tasks": list(args.tasks), "frames": args.frames, "eval_videos": len(eval_seeds),
            "train_videos": len(train_seeds), "eval_seeds": _seed_range(eval_seeds),
            "train_seeds": _seed_range(train_seeds), "difftrack_version": difftrack.__version__}


def run_compare(args):
    if args.from_sweep:
        return _compare_from_sweep(args)
    _check_blocks([args.video_model, args.image_model], [args.block])
    _check_study(args)

    from difftrack.probe.compare import write_compare
    from difftrack.probe.features import token_grid
    from difftrack.probe.tasks import evaluate_grid, evaluate_references

    options = _options(args)
    video_bb, image_bb = _load(args.video_model, args), _load(args.image_model, args)
    block = _block(video_bb, args.block)
    for bb in (video_bb, image_bb):
        bb.check_layers([block])
    eval_seeds, train_seeds, eval_clips, train_clips = _study_clips(args)
    with atomic_directory(check_output_dir(args.out)) as tmp:
        start = time.perf_counter()
        video = evaluate_grid(video_bb, [block], [args.noise_step], eval_clips, train_clips, options)[0]
        image = evaluate_grid(image_bb, [block], [args.noise_step], eval_clips, train_clips, options)[0]
        refs = evaluate_references(eval_clips, train_clips, options, token_grid(video_bb, eval_clips[0].size))
        setting = {**_setting(args, eval_seeds, train_seeds), "seconds": round(time.perf_counter() - start, 1)}
        text = write_compare(tmp, video, image, refs, options.tasks, setting)
    print(text + f"-> {args.out}/compare.md")


def _compare_from_sweep(args):
    from difftrack.probe.compare import records_from_sweep, write_compare

    path, meta, picked, references = records_from_sweep(args.from_sweep, [args.video_model, args.image_model],
                                                        args.block, args.noise_step)
    with atomic_directory(check_output_dir(args.out)) as tmp:
        text = write_compare(tmp, picked[args.video_model], picked[args.image_model], references,
                             meta["tasks"], {**meta, "from_sweep": str(path)})
    print(text + f"-> {args.out}/compare.md")


def run_sweep(args):
    _check_blocks(args.models, args.blocks or [])
    _check_study(args)

    from difftrack.probe.features import token_grid
    from difftrack.probe.sweeps import write_sweep
    from difftrack.probe.tasks import evaluate_grid, evaluate_references

    options = _options(args)
    backbones = [_load(m, args) for m in args.models]
    blocks = args.blocks if args.blocks is not None else list(range(min(bb.num_layers for bb in backbones)))
    for bb in backbones:
        bb.check_layers(blocks)
    eval_seeds, train_seeds, eval_clips, train_clips = _study_clips(args)
    with atomic_directory(check_output_dir(args.out)) as tmp:
        start = time.perf_counter()
        records = [r for bb in backbones
                   for r in evaluate_grid(bb, blocks, args.noise_steps, eval_clips, train_clips, options)]
        refs = evaluate_references(eval_clips, train_clips, options, token_grid(backbones[0], eval_clips[0].size))
        meta = {**_setting(args, eval_seeds, train_seeds), "models": args.models, "blocks": blocks,
                "steps": args.noise_steps, "seconds": round(time.perf_counter() - start, 1)}
        best = write_sweep(tmp, records, refs, options.tasks, meta)
    for model, per_task in best.items():
        for task, b in per_task.items():
            print(f"{model} {task}: best block {b['block']} step {b['step']} (t={b['timestep']:.0f}) "
                  f"{b['metric']}={b['value']:.3f}")
    print(f"-> {args.out}/sweep.md, sweep.json, sweep.csv, best.json, sweep_<task>.png")


# ----- pictures ------------------------------------------------------------------------------

def run_pictures(args):
    from difftrack.data.synthetic import generate_clip

    _check_blocks(args.models, [args.block])
    check_noising(args.noise, [args.noise_step], args.num_steps)
    if not 2 <= args.clusters <= 20:
        raise UserError(f"--clusters must be between 2 and 20, got {args.clusters}")
    clip = None
    if args.video:
        video, fps = read_video(args.video, allow_short=args.allow_short_video)
        name = Path(args.video).stem
    else:
        if args.frames < 2:
            raise UserError(f"--frames must be at least 2, got {args.frames}")
        clip = generate_clip(0 if args.control else args.synthetic, num_frames=args.frames, control=args.control)
        video, fps = clip.video, 4.0
        name = "brick_wall_pan" if args.control else f"clip{args.synthetic}"

    from difftrack.probe.pictures import write_pictures

    backbones = [_load(m, args) for m in args.models]
    for bb in backbones:
        bb.check_layers([_block(bb, args.block)])
    run_name = f"{name}_step{args.noise_step}" + ("" if args.block is None else f"_block{args.block}")
    with atomic_directory(check_output_dir(args.out)) as tmp:
        summary = write_pictures(tmp, name, run_name, backbones, [_block(bb, args.block) for bb in backbones], video, fps,
                                 clip, kind=args.kind, step=args.noise_step, num_steps=args.num_steps,
                                 noise=args.noise, seed=args.seed, clusters=args.clusters,
                                 source=args.video or name)
    for model, entry in summary.items():
        extra = f", cluster kept along true tracks {entry['track_consistency']:.3f}" if "track_consistency" in entry else ""
        print(f"{model}: cluster kept at the same screen position {entry['screen_consistency']:.3f}{extra}")
    print(f"-> {args.out}/{run_name}_strip.png, {run_name}.mp4, {run_name}.json (rows: video, then PCA and K-means "
          f"per model)")
