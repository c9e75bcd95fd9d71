"""Bring clean latents of a real video to denoising step i: add noise, keep them clean, or invert.

The three modes of docs/method.md section 4. Step i indexes the sampler's schedule of ``num_steps``
steps (step 0 is the noisiest, the last step the cleanest), so "step 49 of 50" means the same here
as in the paper. The checks import nothing heavy: the commands run them before loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from difftrack.errors import UserError

if TYPE_CHECKING:
    import torch

NOISE_MODES = ("add", "clean", "invert")


def check_step(step: int, num_steps: int) -> None:
    if num_steps < 1:
        raise UserError(f"--num-steps must be at least 1, got {num_steps}")
    if not 0 <= step < num_steps:
        raise UserError(f"step {step} is out of range; valid steps are 0..{num_steps - 1} for --num-steps {num_steps}")


def check_noising(mode: str, steps, num_steps: int) -> None:
    """The one check of a noise mode and the steps it is asked for (one-line UserErrors)."""
    if num_steps < 1:
        raise UserError(f"--num-steps must be at least 1, got {num_steps}")
    for step in steps:
        check_step(step, num_steps)
    if mode not in NOISE_MODES:
        raise UserError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")


def prepare_latents(backbone, latents: torch.Tensor, mode: str, step: int, num_steps: int, noise: torch.Tensor,
                    conditioning: tuple[torch.Tensor, dict] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (model input latents, timestep) for one forward at ``step``.

    ``conditioning`` is ``backbone.encode_conditioning(...)`` of the prompt the inversion runs with
    (default: the empty prompt).

    ``noise`` is drawn by the caller once per video, so a frame gets the same noise whichever chunk
    it is processed in.
    """
    import torch

    check_noising(mode, [step], num_steps)
    timesteps = backbone.timesteps(num_steps)
    t = timesteps[step]
    if mode == "add":
        return backbone.add_noise(latents, noise, t), t
    if mode == "clean":
        return latents, t
    if conditioning is None:
        embeds, extras = backbone.empty_conditioning()
        batch = latents.shape[0]
        conditioning = (embeds.expand(batch, *embeds.shape[1:]),
                        {k: v.expand(batch, *v.shape[1:]) if torch.is_tensor(v) else v for k, v in extras.items()})
    return invert(backbone, latents, timesteps, step, conditioning), t


def invert(backbone, latents, timesteps, step, conditioning):
    """Deterministic inversion from clean latents up to ``timesteps[step]`` along the sampler's own schedule."""
    import torch

    with torch.no_grad():
        sched = backbone.scheduler
        path = list(reversed(timesteps[step:].tolist()))  # cleanest ... target
        prompt_embeds, extras = conditioning
        x = latents
        if backbone.prediction_type() == "flow":
            # Rectified flow: x_s = (1 - s) x0 + s noise, the model predicts noise - x0; invert with Euler steps.
            prev_sigma = 0.0
            prev_t = 0.0
            for t in path:
                sigma = float(t) / sched.config.num_train_timesteps
                v = backbone.predict(x, torch.tensor(prev_t), prompt_embeds, **extras)
                x = x + (sigma - prev_sigma) * v
                prev_sigma, prev_t = sigma, float(t)
            return x
        if hasattr(sched, "alphas_cumprod"):
            # DDIM inversion: deterministic DDIM update run from low to high noise.
            acp = sched.alphas_cumprod.to(latents.device, torch.float32)
            final = sched.final_alpha_cumprod if hasattr(sched, "final_alpha_cumprod") else acp[0]
            prev_alpha = final.to(latents.device) if torch.is_tensor(final) else torch.tensor(final)
            prev_t = None
            for t in path:
                t_in = torch.tensor(prev_t if prev_t is not None else 0)
                out = backbone.predict(x, t_in, prompt_embeds, **extras).float()
                a_prev = prev_alpha
                x0, eps = _split_prediction(sched.config.prediction_type, x.float(), out, a_prev)
                a_t = acp[int(t)]
                x = (a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps).to(latents.dtype)
                prev_alpha, prev_t = a_t, int(t)
            return x
        raise UserError(f"inversion is not supported for the {type(sched).__name__} scheduler; use --noise add or "
                        f"clean")


def _split_prediction(kind, x, out, alpha):
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if kind == "epsilon":
        return (x - s * out) / a, out
    if kind == "v_prediction":
        x0 = a * x - s * out
        return x0, s * x + a * out
    if kind == "sample":
        return out, (x - a * out) / s.clamp_min(1e-8)
    raise UserError(f"inversion does not know prediction type {kind!r}; use --noise add or clean")
