"""The training recipe as command-line options: what and where a run of the embedded models' training trains,
shared by `difftrack train-tiny` and the profile of a training step (studies/train_step_profile.py)."""

from __future__ import annotations

from difftrack.options import integer, number, positive, seed, torch_device

# The recipe axes' choices, here rather than in difftrack.train so that `difftrack train-tiny` checks its options
# before torch loads.
LOSS_WEIGHTS = ("uniform", "mid")
DATA_SOURCES = ("mix", "photos")


def add_recipe_arguments(parser):
    """Everything that says what and where a run trains, but not for how long or where it writes."""
    parser.add_argument("--batch", type=positive, default=4, help="clips per step (default 4)")
    parser.add_argument("--frames", type=positive, default=8,
                        help="frames per clip: the model's temporal window (RoPE positions) at inference")
    parser.add_argument("--sample-frames", type=positive, default=4,
                        help="frames of each clip trained on per step, a random sorted subset at their own "
                             "temporal positions (attention cost grows with its square)")
    parser.add_argument("--image-twin", action="store_true",
                        help="train the image twin: every frame of every clip is its own one-frame sample")
    parser.add_argument("--layers", type=positive, default=6, help="transformer blocks (default 6)")
    parser.add_argument("--heads", type=positive, default=4, help="attention heads (default 4)")
    parser.add_argument("--head-dim", type=integer(min=2), default=32, help="channels per head, even (default 32)")
    parser.add_argument("--size", type=integer(min=4), default=64,
                        help="frame side in pixels, a multiple of --patch (default 64)")
    parser.add_argument("--patch", type=positive, default=4,
                        help="patch side in pixels (default 4): --size / --patch tokens a side. Pixels per token: "
                             "64/4 as shipped; --size 128 --patch 8 and --size 256 --patch 16 keep its 16x16 tokens "
                             "(and the cost of attention) with 2x and 4x the detail in each")
    parser.add_argument("--lr", type=number(min=0, min_inclusive=False), default=8e-4, help="peak learning rate (default 8e-4)")
    parser.add_argument("--warmup", type=integer(min=0), default=200, help="linear warm-up steps (default 200)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of weights, clips and noise (default 0)")
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--device", default=None,
                        help="where the model trains, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu, "
                             "as every command); a checkpoint resumes on either. "
                             "Generator clips are rendered on the CPU; photo clips, and off the CPU the noise, on "
                             "the device, so a run resumed on another device goes on with that device's draws")
    parser.add_argument("--workers", type=positive, default=1,
                        help="processes preparing clips ahead: the generator's, and photo clips on a CPU run (on "
                             "a GPU they draw photo clips' scenes, which the GPU renders); default 1, on a GPU one per "
                             "spare core keeps it fed")
    recipe = parser.add_argument_group("recipe axes (defaults: the shipped v2 recipe)")
    recipe.add_argument("--data", choices=DATA_SOURCES, default="mix",
                        help="training clips: mix, the procedural generator's (procedural textures and a few "
                             "photographs; default), or photos, a camera moving over photographs of the photo "
                             "corpus's train split with cut-out sprites of others (fetched and cached on first use)")
    recipe.add_argument("--aperiodic", action="store_true",
                        help="walls and sprite textures only speckled or photographic (no stripes, checkers, bricks)")
    recipe.add_argument("--anchor-clean", type=number(min=0, max=1), default=0.0, metavar="FRACTION",
                        help="fraction of clips whose first trained frame is kept nearly clean (s < 0.02), as in "
                             "image-to-video training (default 0)")
    recipe.add_argument("--loss-weight", choices=LOSS_WEIGHTS, default="uniform",
                        help="per-clip loss weight: uniform, or mid = 4 s (1 - s), favouring mid noise (default uniform)")
    recipe.add_argument("--curriculum", type=number(min=0, max=1), default=0.0, metavar="FRACTION",
                        help="fraction of the steps, the first, trained on consecutive frames only (small frame "
                             "gaps first; default 0)")
    recipe.add_argument("--mask-patches", type=number(min=0, max=0.9), default=0.0,
                        metavar="FRACTION",
                        help="in half the clips, replace this fraction of every frame's patches by pure noise, so "
                             "that restoring them pays only by copying from another frame (default 0)")


def recipe_config(args, **run):
    """The TrainConfig of parsed recipe arguments plus ``run`` (out, run_dir, steps, checkpoint_minutes), checked."""
    from difftrack.train import TrainConfig, check_config

    cfg = TrainConfig(**run, batch=args.batch, frames=args.frames, sample_frames=args.sample_frames,
                      image_twin=args.image_twin, layers=args.layers, heads=args.heads, head_dim=args.head_dim,
                      size=args.size, patch=args.patch, data=args.data, lr=args.lr, warmup=args.warmup,
                      seed=args.seed, bf16=not args.no_bf16,
                      aperiodic=args.aperiodic, anchor_clean=args.anchor_clean, loss_weight=args.loss_weight,
                      curriculum=args.curriculum, mask_patches=args.mask_patches,
                      device=str(torch_device(args.device)), workers=args.workers)
    check_config(cfg)
    return cfg
