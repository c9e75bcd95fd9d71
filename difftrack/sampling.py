"""Text-to-video sampling on a backbone's own stock scheduler, with classifier-free (or CAG) guidance.

The branch combination lives in :func:`difftrack.guidance.combine`; this module only runs the loop.
``on_step(step_index, timestep)`` is called before each transformer forward, so descriptor capture
can key on the step (``capture.step = step_index``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from difftrack.backbones.base import Backbone
from difftrack.errors import UserError


def initial_noise(backbone: Backbone, batch: int, num_frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """The starting latents: N(0, 1) of the latent shape for (num_frames, height, width), with the stock
    pipeline's padding to whole temporal patches, from ``seed``."""
    backbone.check_frame_count(num_frames)
    sc = 1 if backbone.vae is None else backbone.spatial_compression
    multiple = sc * backbone.patch_size
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise UserError(f"{backbone.name} needs a height and width that are positive multiples of {multiple} "
                        f"pixels; got {height}x{width}")
    frames = (num_frames - 1) // backbone.temporal_compression + 1
    frames += backbone.latent_frame_padding(frames)
    shape = (batch, frames, backbone.latent_channels, height // sc, width // sc)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(backbone.device, backbone.dtype)


@torch.no_grad()
def sample(backbone: Backbone, prompts: str | list[str], num_frames: int, height: int, width: int,
           num_steps: int = 50, seed: int = 0, guidance_scale: float = 6.0, negative_prompt: str = "",
           guidance=None, on_step: Callable[[int, torch.Tensor], None] | None = None, output: str = "tensor",
           progress: bool = True, image: np.ndarray | None = None):
    """Generate videos for ``prompts``.

    ``image``: uint8 RGB (H, W, 3), the first frame of an image-to-video model (required there, refused
    elsewhere); it is resized to the video's size.

    ``guidance``: a :class:`difftrack.guidance.GuidanceConfig`; by default classifier-free guidance with
    ``guidance_scale`` (none when the scale is <= 1). ``output``: "tensor" gives pixels
    (B, T, 3, H, W) in [-1, 1]; "uint8" gives numpy (T, H, W, 3) for one prompt, (B, T, H, W, 3) for several.
    """
    from difftrack.guidance import GuidanceConfig, GuidedPredictor

    if output not in ("tensor", "uint8"):
        raise ValueError(f"output must be 'tensor' or 'uint8', not {output!r}")
    if num_steps < 1:
        raise UserError(f"the number of sampling steps must be at least 1, got {num_steps}")
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if guidance is None:
        guidance = GuidanceConfig("cfg", guidance_scale) if guidance_scale > 1 else GuidanceConfig("none")
    if backbone.takes_image and image is None:
        raise UserError(f"{backbone.name} generates from a first frame: pass --image FILE")
    latents = initial_noise(backbone, len(prompts), num_frames, height, width, seed)
    cond = backbone.encode_conditioning(prompts)
    uncond = backbone.encode_conditioning([negative_prompt] * len(prompts)) if guidance.uses_uncond else None
    if image is not None:  # every branch sees the same first frame, as in the stock pipeline
        extra = backbone.image_conditioning(image, latents)
        cond = (cond[0], {**cond[1], **extra})
        uncond = None if uncond is None else (uncond[0], {**uncond[1], **extra})
    scheduler = backbone.schedule(num_steps, device=latents.device)
    with GuidedPredictor(backbone, guidance, cond, uncond) as predictor:
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", unit="step", leave=False,
                                   disable=not progress)):
            if on_step is not None:
                on_step(i, t)
            model_input = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") \
                else latents
            pred = predictor(model_input, t, i)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0].to(backbone.dtype)
    padding = backbone.latent_frame_padding((num_frames - 1) // backbone.temporal_compression + 1)
    video = backbone.decode_latents(latents[:, padding:]).float()
    if output == "tensor":
        return video
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    return frames[0] if single else np.ascontiguousarray(frames)
