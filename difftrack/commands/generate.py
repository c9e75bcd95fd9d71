"""Generate videos, optionally with cross-attention guidance (CAG) for temporal coherence.

CAG adds s_cag (pred_c - pred_perturbed) to classifier-free guidance, where the perturbed branch runs
the --cag-layers with cross-frame attention removed (each video token sees only the text and its own
latent frame). Writes the MP4 and, beside it, a JSON of the same name (--out v.mp4: v.mp4 and v.json) with
the prompt, seed, guidance settings, model and seconds.

examples:
  difftrack generate --prompt "a striped disc moves left over a brick wall" --out disc.mp4  # CFG
  difftrack generate --prompt "a striped disc moves left over a brick wall" --guidance cag --cag-layers 4 5 --out cag.mp4
  difftrack generate --prompt "a checkered square moves up" --guidance cag --cag-layers auto --recommendation runs/analysis
  difftrack generate --prompts-file prompts.txt --seed 0 1 2 --guidance cag --out videos/
  difftrack generate --model THUDM/CogVideoX-2b --prompt "a cat" --guidance cag --cag-layers 13 17 21 --steps 50
  difftrack generate --model THUDM/CogVideoX-5b-I2V --image first.png --prompt "the cat walks left"
  difftrack generate --model hunyuanvideo --prompt "a cat walks on grass" --offload   # a GPU smaller than the pipeline

prompts file: one prompt per line; blank lines and lines starting with # are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import difftrack
from difftrack.backbones import DEFAULT_BACKBONE
from difftrack.commands import check_layers_before_loading, chosen_layers
from difftrack.errors import UserError
from difftrack.guidance import GUIDANCE_MODES, GuidanceConfig, check_cag_support
from difftrack.io import atomic_path, read_image, read_prompts, write_video
from difftrack.options import add_device_arguments, backbone_options, check_output_dir, check_output_file, integer
from difftrack.options import number, positive, seed


def add_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt of one video")
    src.add_argument("--prompts-file", metavar="FILE", help="text file with one prompt per line (writes one video per "
                                                            "prompt and seed into the --out directory)")
    p.add_argument("--negative-prompt", default="", help="prompt of the unconditional branch (default: empty)")
    p.add_argument("--image", metavar="FILE",
                   help="first frame of an image-to-video model (PNG/JPEG; resized to the video's size)")
    p.add_argument("--model", default=DEFAULT_BACKBONE,
                   help=f"registry name, hub id or local pipeline dir (default {DEFAULT_BACKBONE})")
    add_device_arguments(p)
    p.add_argument("--offload", action="store_true",
                   help="model CPU offload (diffusers'/accelerate's): keep every model in CPU memory and move each to "
                        "the GPU only while it runs, so that GPU memory holds the largest model instead of the "
                        "whole pipeline (slower: weights cross the bus at every switch); needs a CUDA --device")
    p.add_argument("--guidance", choices=GUIDANCE_MODES, default="cfg",
                   help="none: conditional prediction only; cfg: classifier-free guidance; cag: CFG plus "
                        "cross-attention guidance (default cfg)")
    p.add_argument("--cfg-scale", type=number(min=0), default=6.0, metavar="W", help="classifier-free guidance weight w_cfg (default 6)")
    p.add_argument("--cag-scale", type=number(min=0), default=1.0, metavar="S", help="CAG weight s_cag (default 1.0)")
    p.add_argument("--cag-layers", nargs="+", default=None, metavar="L",
                   help="0-based attention layers perturbed by CAG, or `auto` (reads --recommendation, else the "
                        "recommendation shipped with the model); default: "
                        "the method's CAG layers for the model's architecture where known (`difftrack models` lists "
                        "them), else its middle layers")
    p.add_argument("--recommendation", metavar="DIR",
                   help="analysis directory (or its recommendation.json) for --cag-layers auto; default: the "
                        "one shipped with the model, if any")
    p.add_argument("--cag-steps", nargs=2, type=integer(min=0), default=None, metavar=("START", "STOP"),
                   help="apply CAG only at step indices START <= i < STOP (default: every step; a STOP past --steps "
                        "means to the last step)")
    p.add_argument("--sequential-branches", action="store_true",
                   help="run the uncond/cond/perturbed branches one after another instead of batched (less memory, "
                        "same result)")
    p.add_argument("--steps", type=positive, default=30, help="denoising steps (default 30)")
    p.add_argument("--seed", type=seed, nargs="+", default=[0], metavar="S", help="seed(s); one video per seed")
    p.add_argument("--frames", type=positive, default=None, help="RGB frames (default: the model's own)")
    p.add_argument("--height", type=positive, default=None, help="frame height in pixels (default: the model's own)")
    p.add_argument("--width", type=positive, default=None, help="frame width in pixels (default: the model's own)")
    p.add_argument("--fps", type=number(min=0, min_inclusive=False), default=8.0, help="frame rate of the written MP4 (default 8)")
    p.add_argument("--out", default=None,
                   help="output MP4 for one video (default generated.mp4); an existing directory for several")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


def plan_outputs(args, prompts: list[str]) -> list[tuple[str, int, Path]]:
    """(prompt, seed, output path) of every video; checked before any model is loaded."""
    seeds = list(dict.fromkeys(args.seed))
    if args.prompts_file is None and len(seeds) == 1:
        try:
            return [(prompts[0], seeds[0], check_output_file(args.out or "generated.mp4", (".mp4",)))]
        except UserError as exc:
            raise UserError(f"--out: {exc}") from None
    if args.out is None or not Path(args.out).is_dir():
        raise UserError(f"with several prompts or seeds, --out must be an existing directory "
                        f"(got {args.out or 'nothing'}); create it first")
    out = check_output_dir(args.out)
    return [(prompt, seed, out / f"{i:03d}-{_slug(prompt)}-seed{seed}.mp4")
            for i, prompt in enumerate(prompts) for seed in seeds]


def run(args):
    cfg_scale, cag_scale = args.cfg_scale, args.cag_scale
    if args.prompts_file is not None:
        prompts = read_prompts(args.prompts_file)
    elif not args.prompt.strip():
        raise UserError("--prompt is empty; give the text the video should show")
    else:
        prompts = [args.prompt]
    jobs = plan_outputs(args, prompts)
    image = read_image(args.image) if args.image else None
    if args.guidance == "cag":
        check_layers_before_loading(args.model, args.cag_layers, "--cag-layers")
    guidance = GuidanceConfig(args.guidance, cfg_scale, cag_scale, (),
                              tuple(args.cag_steps) if args.cag_steps else None, args.sequential_branches)
    if args.guidance == "cag" and args.cag_steps and args.cag_steps[0] >= args.steps:
        raise UserError(f"--cag-steps starts at step {args.cag_steps[0]}, but there are only --steps {args.steps} "
                        f"(indices 0..{args.steps - 1}); CAG would never act")

    from difftrack.sampling import sample

    options = backbone_options(args)
    if args.offload and options["device"].type != "cuda":
        raise UserError(f"--offload moves models between CPU memory and a GPU; it needs --device cuda "
                        f"(got {options['device']})")
    if args.offload:
        backbone = difftrack.create_backbone(args.model, **{**options, "device": "cpu"})
        backbone.enable_model_cpu_offload(options["device"])
    else:
        backbone = difftrack.create_backbone(args.model, **options)
    if args.guidance == "cag":
        check_cag_support(backbone)
    layers = []
    if args.guidance == "cag":
        layers = chosen_layers(args.cag_layers, "--cag-layers", args.recommendation, backbone)[0]
        layers = backbone.default_cag_layers() if layers is None else layers
    backbone.check_prompt_words(prompts + [args.negative_prompt])
    guidance = dataclasses.replace(guidance, cag_layers=tuple(layers))
    settings = {"guidance": args.guidance, "cfg_scale": cfg_scale, "cag_scale": cag_scale, "cag_layers": layers,
                "cag_steps": args.cag_steps, "steps": args.steps, "negative_prompt": args.negative_prompt,
                "image": args.image, "offload": args.offload,
                "model": backbone.name, "difftrack_version": difftrack.__version__}
    frames, height, width = backbone.generation_size(args.frames, args.height, args.width)
    for prompt, seed, out in jobs:
        start = time.perf_counter()
        video = sample(backbone, prompt, num_frames=frames, height=height, width=width, num_steps=args.steps,
                       seed=seed, negative_prompt=args.negative_prompt, guidance=guidance, output="uint8",
                       image=image)
        seconds = time.perf_counter() - start
        meta = {"prompt": prompt, "seed": seed, **settings, "frames": int(video.shape[0]),
                "height": int(video.shape[1]), "width": int(video.shape[2]), "seconds": round(seconds, 3)}
        with atomic_path(out.with_suffix(".json")) as json_tmp:
            json_tmp.write_text(json.dumps(meta, indent=2))
            write_video(out, video, args.fps)
        print(f"{prompt!r} seed {seed}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]}, "
              f"{args.guidance} guidance, {seconds:.1f} s -> {out}")
