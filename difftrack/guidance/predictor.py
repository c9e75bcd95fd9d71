"""The guidance step of Cross-Attention Guidance (CAG) and CFG: guide generation away from a prediction made without cross-frame attention.

The perturbed branch (``difftrack.guidance.removal``) runs the chosen layers without cross-frame
attention.

The guided prediction is

    pred = pred_u + w_cfg (pred_c - pred_u) + s_cag (pred_c - pred_p)

in the model's own prediction space (noise, v or flow). At a fixed x_t and t each of these is an
affine function of the noise prediction with the same coefficients for every branch (v: eps =
sigma x_t + alpha v; flow with x_t = (1 - s) x0 + s eps: eps = x_t + (1 - s) pred). The branch
weights (1 - w_cfg, w_cfg + s_cag, -s_cag) sum to 1, so the shared x_t term passes through
unchanged, and guiding the model's prediction equals guiding the noise prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from difftrack.backbones.base import Backbone
from difftrack.errors import UserError
from difftrack.guidance.removal import CrossFrameAttentionRemoval

if TYPE_CHECKING:
    import torch

GUIDANCE_MODES = ("none", "cfg", "cag")


@dataclass
class GuidanceConfig:
    """How to combine branches. ``cag_steps``: [start, stop) step indices where CAG acts (None: every step)."""

    mode: str = "cfg"
    cfg_scale: float = 6.0
    cag_scale: float = 1.0
    cag_layers: tuple[int, ...] = ()
    cag_steps: tuple[int, int] | None = None
    sequential_branches: bool = False

    def __post_init__(self):
        if self.mode not in GUIDANCE_MODES:
            raise UserError(f"unknown guidance {self.mode!r}; choose one of {', '.join(GUIDANCE_MODES)}")
        for name in ("cfg_scale", "cag_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be a finite number >= 0, got {value!r}")
        if self.cag_steps is not None:
            start, stop = self.cag_steps
            if not 0 <= start < stop:
                raise UserError(f"--cag-steps {start} {stop} is not a range: need 0 <= START < STOP")

    @property
    def uses_uncond(self) -> bool:
        return self.mode in ("cfg", "cag")

    def cag_active(self, step_index: int) -> bool:
        """Whether the perturbed branch contributes at this step; with scale 0 or outside the range it does not."""
        if self.mode != "cag" or self.cag_scale == 0:
            return False
        return self.cag_steps is None or self.cag_steps[0] <= step_index < self.cag_steps[1]


def combine(pred_cond, pred_uncond=None, pred_perturbed=None, cfg_scale: float = 6.0, cag_scale: float = 0.0):
    """pred_u + w_cfg (pred_c - pred_u) + s_cag (pred_c - pred_p); absent branches drop their term."""
    out = pred_cond if pred_uncond is None else pred_uncond + cfg_scale * (pred_cond - pred_uncond)
    if pred_perturbed is not None:
        out = out + cag_scale * (pred_cond - pred_perturbed)
    return out


def _batch_conditioning(conds: list[tuple]) -> tuple[torch.Tensor, dict]:
    """Stack per-branch (embeds, extras) along the batch.

    Branches encoded separately can differ in text length when the adapter trims padding
    (HunyuanVideo); the shorter ones are padded back with masked-out tokens, which the model ignores.
    """
    import torch
    import torch.nn.functional as F

    embeds = [c[0] for c in conds]
    extras = [dict(c[1]) for c in conds]
    longest = max(e.shape[1] for e in embeds)
    for i, e in enumerate(embeds):
        pad = longest - e.shape[1]
        if pad:
            if "prompt_attention_mask" not in extras[i]:
                raise ValueError("branches differ in text length and carry no prompt_attention_mask to pad with")
            embeds[i] = F.pad(e, (0, 0, 0, pad))
            extras[i]["prompt_attention_mask"] = F.pad(extras[i]["prompt_attention_mask"], (0, pad))
    stacked = {}
    for name in extras[0]:
        values = [x[name] for x in extras]
        stacked[name] = torch.cat(values, dim=0) if torch.is_tensor(values[0]) else values[0]
    return torch.cat(embeds, dim=0), stacked


class GuidedPredictor:
    """``predictor(latents, timestep, step_index)`` -> the guided prediction for one denoising step.

    Branches are [uncond, cond, cond-perturbed] (only those the mode and step need), run as one batch
    or, with ``sequential_branches``, one forward each. ``cond``/``uncond`` are (embeds, extras) as
    :meth:`Backbone.encode_conditioning` returns them, each with the latents' batch size.
    """

    def __init__(self, backbone: Backbone, config: GuidanceConfig, cond: tuple, uncond: tuple | None = None):
        self.backbone = backbone
        self.config = config
        self.cond = cond
        self.uncond = uncond
        if config.uses_uncond and uncond is None:
            raise ValueError(f"guidance {config.mode} needs the unconditional (negative prompt) embeddings")
        self.removal = CrossFrameAttentionRemoval(backbone, config.cag_layers) if config.mode == "cag" else None

    def __enter__(self):
        if self.removal is not None:
            self.removal.__enter__()
        return self

    def __exit__(self, *exc):
        if self.removal is not None:
            self.removal.__exit__(*exc)
        return False

    def branches(self, step_index: int) -> list[str]:
        names = ["uncond", "cond"] if self.config.uses_uncond else ["cond"]
        return names + ["perturbed"] if self.config.cag_active(step_index) else names

    def _forward(self, latents, timestep, names: list[str]) -> list[torch.Tensor]:
        b = latents.shape[0]
        embeds, extras = _batch_conditioning([self.uncond if n == "uncond" else self.cond for n in names])
        if self.removal is not None:
            state = self.removal.state
            state.perturbed_from = names.index("perturbed") * b if "perturbed" in names else None
            state.tokens_per_frame = self.removal.tokens_per_frame(latents)
        try:
            pred = self.backbone.predict(latents.repeat(len(names), *[1] * (latents.dim() - 1)), timestep, embeds,
                                         **extras)
        finally:
            if self.removal is not None:
                self.removal.state.perturbed_from = None
        return list(pred.split(b, dim=0))

    def __call__(self, latents: torch.Tensor, timestep, step_index: int) -> torch.Tensor:
        import torch

        names = self.branches(step_index)
        with torch.no_grad():
            if self.config.sequential_branches:
                preds = [self._forward(latents, timestep, [n])[0] for n in names]
            else:
                preds = self._forward(latents, timestep, names)
        by_name = dict(zip(names, preds))
        return combine(by_name["cond"], by_name.get("uncond"), by_name.get("perturbed"), self.config.cfg_scale,
                       self.config.cag_scale)
