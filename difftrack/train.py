"""Training of the embedded models on procedural or photo clips (rectified flow, classifier-free caption dropout).

Deterministic: clip seeds and noise depend only on (seed, step), so a run killed and resumed with
the same command reaches the same weights as an uninterrupted one. Checkpoints (weights as
safetensors, optimiser state via torch.save) go to ``run_dir`` every few minutes; the final model
is written to ``out`` in the layout ``create_backbone(path)`` loads.

The noise recipe gives the denoiser a reason to copy content across frames: half of the clips
have some frames cleaner than the clip's noise level, and a quarter have one nearly clean frame
(as in image-to-video training). Each step trains on ``sample_frames`` frames drawn from clips of
``frames`` frames (sorted, at their own temporal RoPE positions): the model sees frame gaps of 1 to
``frames - 1`` and every position it meets at inference, while attention, which dominates the cost,
runs over fewer tokens. The image twin gets exactly the same frames, noise and optimiser, but every
frame is its own sample, so it never sees another frame.

Data (``data``): ``mix``, the procedural generator's clips (:mod:`difftrack.data.synthetic`: procedural textures
and a few photographs), rendered ahead on the CPU by background workers (``workers``); or ``photos``, clips of the
photo corpus's train split (:mod:`difftrack.data.photo_clips`), whose scenes the workers draw ahead and render too
on a CPU run, while on a GPU the training process renders each batch in one call on the device. Pixels per token
(``size`` / ``patch``): 64 / 4 as shipped; 128 / 8 and 256 / 16 keep the 16 x 16 token grid, and so the cost of
attention, with 2x and 4x the detail in every token. Noise is drawn on the CPU for
a CPU run and on the device otherwise (at batch 32, drawing it on the CPU and copying it over would take longer
than the step), so a checkpoint resumed on another device goes on with that device's draws (and, for photo
clips, its rendering).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from difftrack.errors import UserError
from difftrack.train_options import DATA_SOURCES, LOSS_WEIGHTS
from difftrack.evaluation.seeds import TRAINING_SEED_START


@dataclass
class TrainConfig:
    out: str
    run_dir: str
    steps: int = 3000
    batch: int = 4
    frames: int = 8
    sample_frames: int = 4
    image_twin: bool = False
    layers: int = 6
    heads: int = 4
    head_dim: int = 32
    size: int = 64  # frame side in pixels
    patch: int = 4  # patch side in pixels: size / patch tokens a side
    lr: float = 8e-4
    warmup: int = 200
    caption_dropout: float = 0.1
    seed: int = 0
    bf16: bool = True
    checkpoint_minutes: float = 4.0
    device: str = "cpu"  # where the model trains, photo clips are rendered and (off the CPU) noise is drawn
    workers: int = 1  # background processes preparing clips ahead (a GPU step outruns one)
    # Recipe axes of the screening study (studies/embedded_screening.py); the defaults are the v2 recipe.
    data: str = "mix"  # "mix": the procedural generator's clips; "photos": photo clips of the corpus's train split
    aperiodic: bool = False  # walls and sprites only speckled or photographic
    anchor_clean: float = 0.0  # fraction of clips whose first trained frame is nearly clean (s < 0.02)
    loss_weight: str = "uniform"  # or "mid": weight 4 s (1 - s), favouring mid noise over the extremes
    curriculum: float = 0.0  # fraction of the steps (the first) trained on consecutive frames only
    mask_patches: float = 0.0  # in half the clips, this fraction of the patches of every frame is pure noise


PHOTO_SPLIT = "train"  # the photo corpus's split training renders from (the held-out one is for evaluation)


def logit_normal(generator, shape) -> torch.Tensor:
    return torch.sigmoid(torch.randn(shape, generator=generator))


def noise_levels(generator, batch: int, frames: int, anchor_clean: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip level s (B,), per-frame levels (B, F)): the timestep the model is told is the clip level."""
    s = logit_normal(generator, (batch,))
    per_frame = s[:, None].expand(batch, frames).clone()
    cleaner = (torch.rand(batch, 1, generator=generator) < 0.5) & (torch.rand(batch, frames, generator=generator) < 0.5)
    per_frame = torch.where(cleaner, s[:, None] * torch.rand(batch, frames, generator=generator), per_frame)
    one_clean = torch.rand(batch, generator=generator) < 0.25
    idx = torch.randint(0, frames, (batch,), generator=generator)
    nearly_clean = 0.05 * torch.rand(batch, generator=generator)
    rows = torch.nonzero(one_clean).flatten()
    per_frame[rows, idx[rows]] = nearly_clean[rows]
    if anchor_clean > 0:  # drawn only then, so the v2 recipe's noise stays bit-identical
        anchored = torch.nonzero(torch.rand(batch, generator=generator) < anchor_clean).flatten()
        per_frame[anchored, 0] = 0.02 * torch.rand(len(anchored), generator=generator)
    return s, per_frame


def masked_patches(generator, shape, patch: int, fraction: float) -> torch.Tensor:
    """(B, F, 1, H, W) bool: whole patches replaced by pure noise, in half the clips. A masked patch can
    be restored only from the same content in another frame (the image twin can only inpaint it), so the
    loss on it rewards finding that content: cross-frame matching."""
    b, f, _, h, w = shape
    clips = torch.rand(b, 1, 1, 1, generator=generator) < 0.5
    mask = clips & (torch.rand(b, f, h // patch, w // patch, generator=generator) < fraction)
    return mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3).unsqueeze(2)


def frame_subset(cfg: TrainConfig, step: int) -> np.ndarray:
    """The sorted clip frames trained on at ``step`` (all of them when ``sample_frames >= frames``):
    a random subset, or consecutive frames at a random start during the curriculum's first steps."""
    if cfg.sample_frames >= cfg.frames:
        return np.arange(cfg.frames)
    rng = np.random.default_rng((cfg.seed, step))
    if step < cfg.curriculum * cfg.steps:
        return rng.integers(0, cfg.frames - cfg.sample_frames + 1) + np.arange(cfg.sample_frames)
    return np.sort(rng.choice(cfg.frames, size=cfg.sample_frames, replace=False))


@functools.lru_cache(maxsize=None)
def training_photos(size: int, device: str):
    """The train split's photographs as a bank for clips of ``size`` pixels on ``device`` (loaded once a process;
    fetching the corpus when the split needs it, with a one-line error if that fails)."""
    from difftrack.data.photo_clips import PhotoBank
    from difftrack.data.photos import load_photos

    return PhotoBank(list(load_photos(PHOTO_SPLIT).values()), size, device)


def prepared_clips(cfg: TrainConfig, step: int):
    """The share of the batch of ``step`` that background workers make ahead on the CPU: the finished batch (as
    :func:`training_batch` returns it) of generator clips, and of photo clips when the model trains on the CPU;
    for a model on a GPU, the photo clips' scenes only ((scenes, frames)), which :func:`finish_batch` renders
    there in one batched call."""
    frames = frame_subset(cfg, step)
    seeds = [TRAINING_SEED_START + cfg.seed * 10_000_000 + step * cfg.batch + i for i in range(cfg.batch)]
    if cfg.data == "photos":
        from difftrack.data.photo_clips import draw_scene

        bank = training_photos(cfg.size, "cpu")
        scenes = [draw_scene(seed, bank, cfg.frames) for seed in seeds]
        return rendered_batch(cfg, scenes, frames, "cpu") if cfg.device == "cpu" else (scenes, frames)
    from difftrack.data.synthetic import generate_clip

    videos, captions = [], []
    for seed in seeds:
        clip = generate_clip(seed, num_frames=cfg.frames, height=cfg.size, width=cfg.size, aperiodic=cfg.aperiodic)
        videos.append(torch.from_numpy(clip.video[frames]).permute(0, 3, 1, 2))
        captions.append(clip.caption)
    return torch.stack(videos).float() / 127.5 - 1.0, captions, frames


def rendered_batch(cfg: TrainConfig, scenes: list, frames, device: str):
    """(pixels (B, F', 3, H, W) in [-1, 1] on ``device``, captions, frames) of photo clip scenes."""
    from difftrack.data.photo_clips import render

    video = render(scenes, training_photos(cfg.size, device), frames)
    return video.float() / 127.5 - 1.0, [scene.caption for scene in scenes], frames


def finish_batch(cfg: TrainConfig, prepared):
    """The batch of what :func:`prepared_clips` made: as it is, or photo clips rendered on the training device."""
    if cfg.data == "photos" and cfg.device != "cpu":
        return rendered_batch(cfg, *prepared, cfg.device)
    return prepared


def training_batch(cfg: TrainConfig, step: int):
    """Pixels (B, F', 3, H, W) in [-1, 1] of the ``frame_subset`` of the clips of ``step``, their
    captions, and the subset. Generator clips come on the CPU, photo clips on ``cfg.device``."""
    return finish_batch(cfg, prepared_clips(cfg, step))


class _StepClips(torch.utils.data.Dataset):
    """Item ``i`` is :func:`prepared_clips` of step ``start + i``: a pure function of the step, so a
    background worker can make it ahead without touching determinism."""

    def __init__(self, cfg: TrainConfig, start: int):
        self.cfg, self.start = cfg, start

    def __len__(self):
        return self.cfg.steps - self.start

    def __getitem__(self, i):
        return prepared_clips(self.cfg, self.start + i)


def prefetched_batches(cfg: TrainConfig, start: int):
    # A DataLoader hands items back in index order whatever the number of workers: the steps stay in order.
    prepared = torch.utils.data.DataLoader(_StepClips(cfg, start), batch_size=None, num_workers=cfg.workers,
                                           prefetch_factor=4)
    return (finish_batch(cfg, item) for item in prepared)


def rotary_embedding(cfg: TrainConfig, grid: int, head_dim: int, frames: np.ndarray):
    """3D RoPE of the chosen clip frames at their own temporal positions (one position for the twin)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    if cfg.image_twin:
        return get_3d_rotary_pos_embed(head_dim, ((0, 0), (grid, grid)), (grid, grid), 1)
    cos, sin = get_3d_rotary_pos_embed(head_dim, ((0, 0), (grid, grid)), (grid, grid), cfg.frames)
    rows = torch.as_tensor(frames)
    return tuple(t.reshape(cfg.frames, grid * grid, -1)[rows].reshape(len(frames) * grid * grid, -1)
                 for t in (cos, sin))


def loss_for_step(cfg: TrainConfig, components: dict, step: int, batch) -> torch.Tensor:
    transformer, text_encoder, tokenizer = components["transformer"], components["text_encoder"], components["tokenizer"]
    x0, captions, frames = batch
    device = transformer.device
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # the text encoder's dropout: same masks after a resume
    b, f = x0.shape[:2]
    drop = torch.rand(b, generator=g) < cfg.caption_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    s, per_frame = noise_levels(g, b, f, cfg.anchor_clean)
    x0 = x0.to(device)
    if device.type == "cpu":
        noise = torch.randn(x0.shape, generator=g)
    else:  # on the device: at batch 32 a CPU draw and its copy take longer than the step
        noise = torch.randn(x0.shape, generator=torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + step),
                            device=device)
    sf = per_frame.to(device)[:, :, None, None, None]
    xs = (1 - sf) * x0 + sf * noise
    if cfg.mask_patches > 0:  # drawn only then, so the other recipes' noise stays bit-identical
        mask = masked_patches(g, x0.shape, transformer.config.patch_size, cfg.mask_patches)
        xs = torch.where(mask.to(device), noise, xs)
    target = noise - x0
    ids = tokenizer(captions, padding="max_length", max_length=transformer.config.max_text_seq_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    timestep = (s * 1000).to(device)
    rope = tuple(t.to(device) for t in rotary_embedding(cfg, cfg.size // transformer.config.patch_size,
                                                        transformer.config.attention_head_dim, np.asarray(frames)))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        text = text_encoder(ids)[0]
        if cfg.image_twin:  # every frame its own sample
            xs = xs.reshape(b * f, 1, *xs.shape[2:])
            text = text.repeat_interleave(f, dim=0)
            timestep = timestep.repeat_interleave(f)
        pred = transformer(hidden_states=xs, encoder_hidden_states=text, timestep=timestep, image_rotary_emb=rope,
                           return_dict=False)[0]
    error = (pred.float().reshape(target.shape) - target).square().flatten(1).mean(1)
    weight = 4 * s * (1 - s) if cfg.loss_weight == "mid" else torch.ones_like(s)
    return (weight.to(device) * error).mean()


def _save_checkpoint(run_dir: Path, components, optimizer, lr_schedule, step, history, cfg) -> None:
    from difftrack.backbones.embedded import save_components

    tmp = run_dir / "checkpoint.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    save_components(components, tmp, frames_per_sample=1 if cfg.image_twin else cfg.frames)
    torch.save({"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "history": history, "config": asdict(cfg)}))
    final = run_dir / "checkpoint"
    if final.exists():
        import shutil

        old = run_dir / "checkpoint.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def _load_checkpoint(run_dir: Path, components, optimizer, lr_schedule, cfg):
    from safetensors.torch import load_file

    ckpt = run_dir / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    # --steps may change between invocations: a run can be extended, or finished at its last checkpoint.
    free = ("out", "run_dir", "checkpoint_minutes", "steps", "device", "workers")
    # Checkpoints written before a recipe axis existed hold its default.
    saved = {k: v for k, v in {**asdict(TrainConfig("", "")), **state["config"]}.items() if k not in free}
    now = {k: v for k, v in asdict(cfg).items() if k not in free}
    if saved != now:
        diff = ", ".join(f"{k}: {saved.get(k)} -> {now.get(k)}" for k in now if saved.get(k) != now.get(k))
        raise UserError(f"{run_dir} holds a checkpoint of a different run ({diff}); rerun the same command or "
                        f"choose another --run-dir")
    components["transformer"].load_state_dict(load_file(ckpt / "transformer" / "diffusion_pytorch_model.safetensors"))
    components["text_encoder"].load_state_dict(load_file(ckpt / "text_encoder" / "model.safetensors"), strict=False)
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=cfg.device)
    optimizer.load_state_dict(opt["optimizer"])
    lr_schedule.load_state_dict(opt["lr_schedule"])
    return state["step"], state["history"]


def check_config(cfg: TrainConfig) -> None:
    """Refuse, in one line, a configuration that cannot train (before anything is built or written)."""
    if cfg.patch < 1 or cfg.size % cfg.patch:
        raise UserError(f"--size {cfg.size} is not a multiple of --patch {cfg.patch}")
    if cfg.data not in DATA_SOURCES:
        raise UserError(f"--data must be one of {', '.join(DATA_SOURCES)}, got {cfg.data!r}")
    if cfg.aperiodic and cfg.data != "mix":
        raise UserError("--aperiodic chooses among the generator's textures; it has no meaning with --data photos")
    if min(cfg.steps, cfg.batch, cfg.frames, cfg.sample_frames, cfg.layers, cfg.heads, cfg.workers) < 1:
        raise UserError("--steps, --batch, --frames, --sample-frames, --layers, --heads and --workers must be positive")
    if cfg.head_dim < 2 or cfg.head_dim % 2:
        raise UserError(f"--head-dim must be even and at least 2 (rotary positions rotate channel pairs), got {cfg.head_dim}")
    if cfg.loss_weight not in LOSS_WEIGHTS:
        raise UserError(f"--loss-weight must be one of {', '.join(LOSS_WEIGHTS)}, got {cfg.loss_weight!r}")
    if not (0 <= cfg.anchor_clean <= 1 and 0 <= cfg.curriculum <= 1 and 0 <= cfg.mask_patches <= 0.9):
        raise UserError("--anchor-clean and --curriculum are fractions in [0, 1], --mask-patches in [0, 0.9]")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserError(f"--lr must be a finite number > 0, got {cfg.lr}")


def fresh_training(cfg: TrainConfig):
    """(components, parameters, optimiser, learning-rate schedule) of a run at step 0, on ``cfg.device``."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from difftrack.backbones.embedded import build_components, model_config

    mcfg = model_config(layers=cfg.layers, heads=cfg.heads, head_dim=cfg.head_dim, size=cfg.size, frames=cfg.frames,
                        patch=cfg.patch)
    components = build_components(mcfg, seed=cfg.seed)
    for name in ("transformer", "text_encoder"):
        components[name].to(cfg.device).train().requires_grad_(True)
    params = list(components["transformer"].parameters()) + list(components["text_encoder"].parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    return components, params, optimizer, get_cosine_schedule_with_warmup(optimizer, cfg.warmup, cfg.steps)


def optimizer_step(cfg: TrainConfig, components: dict, params: list, optimizer, step: int, batch) -> torch.Tensor:
    """One step of training on ``batch`` (the batch of ``step``); returns the loss."""
    loss = loss_for_step(cfg, components, step, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) and write the final model to ``cfg.out``; returns a summary."""
    from difftrack.backbones.embedded import save_components

    check_config(cfg)
    if cfg.data == "photos":  # a corpus that cannot be fetched is a one-line error before anything is written;
        for where in ("cpu", cfg.device):  # and the workers, forked later, find the scenes' bank loaded
            training_photos(cfg.size, where)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    components, params, optimizer, lr_schedule = fresh_training(cfg)
    step, history = 0, []
    if (run_dir / "checkpoint" / "state.json").is_file():
        step, history = _load_checkpoint(run_dir, components, optimizer, lr_schedule, cfg)
    started = time.time()
    last_save = started
    wall_before = history[-1]["wall"] if history else 0.0
    bar = tqdm(total=cfg.steps, initial=step, desc="train-tiny" + (" (image twin)" if cfg.image_twin else ""),
               disable=not progress, mininterval=5)
    batches = prefetched_batches(cfg, step) if step < cfg.steps else iter(())
    while step < cfg.steps:
        loss = optimizer_step(cfg, components, params, optimizer, step, next(batches))
        lr_schedule.step()
        step += 1
        history.append({"step": step, "loss": loss.item(), "wall": wall_before + time.time() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean([h['loss'] for h in history[-50:]]):.4f}")
        if not math.isfinite(history[-1]["loss"]):
            raise RuntimeError(f"loss became {history[-1]['loss']} at step {step}")
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.steps:
            _save_checkpoint(run_dir, components, optimizer, lr_schedule, step, history, cfg)
            last_save = time.time()
    bar.close()
    for m in (components["transformer"], components["text_encoder"]):
        m.eval()
    tail = [h["loss"] for h in history[-100:]]
    summary = {"steps": step, "final_loss": float(np.mean(tail)) if tail else None,
               "wall_seconds": history[-1]["wall"] if history else 0.0, "config": asdict(cfg)}
    save_components(components, cfg.out, frames_per_sample=1 if cfg.image_twin else cfg.frames,
                    extra={"trained_steps": step, "trained_on": "images" if cfg.image_twin else "videos"})
    compact = [{"step": h["step"], "loss": round(h["loss"], 5), "wall": round(h["wall"], 1)} for h in history]
    (Path(cfg.out) / "training.json").write_text(json.dumps({**summary, "history": compact}, separators=(",", ":")))
    return summary
