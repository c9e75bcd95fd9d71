"""Cross-Attention Guidance (CAG): guide generation away from a prediction made without cross-frame attention.

The perturbed branch runs the chosen layers with every video token attending only to the text and
to the tokens of its own latent frame; text tokens still attend everywhere. The masking acts on the
logits, so each row renormalises over what it may see. It is expressed directly as per-frame block
attention: the video queries of frame f go through one SDPA call against the keys [text; frame f],
batched over frames as (B, H * F, P, D); no mask over the whole sequence is ever built.

The processors wrap the stock attention modules of the chosen layers only (the pattern of
diffusers' PAG processors). Batch rows before ``state.perturbed_from`` go through the stock
processor untouched; the rows from there on are perturbed.

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

import torch
import torch.nn.functional as F

from difftrack.backbones.base import Backbone
from difftrack.errors import UserError

GUIDANCE_MODES = ("none", "cfg", "cag")

# Backbone family -> how its stock processor lays out q/k/v (see the _*_perturbed functions).
_JOINT_TEXT_FIRST = {"cogvideox", "cogvideox-i2v", "embedded"}
_JOINT_TEXT_LAST = {"hunyuanvideo"}
_REFUSALS = {
    "wan": "Wan keeps text in separate cross-attention, so CAG (video attends only to text and its own frame "
           "in the joint 3D attention) has no joint attention to restrict; use --guidance cfg with Wan",
    "embedded-image": "the image model denoises every frame on its own and never attends across frames, so "
                      "CAG would perturb nothing; use tiny-video or --guidance cfg",
}


def check_cag_support(backbone: Backbone) -> None:
    """Raise a one-line UserError when CAG is not defined for this backbone."""
    if backbone.family in _REFUSALS:
        raise UserError(f"--guidance cag does not apply to {backbone.name}: {_REFUSALS[backbone.family]}")
    if backbone.family not in _JOINT_TEXT_FIRST | _JOINT_TEXT_LAST:
        raise UserError(f"--guidance cag has no attention processor for the {backbone.family} family "
                        f"({backbone.name}); supported: CogVideoX, HunyuanVideo and the embedded video model")


# ----- the attention itself ---------------------------------------------------------------------
def frame_local_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, text_len: int,
                          text_first: bool, tokens_per_frame: int, key_mask: torch.Tensor | None = None,
                          scale: float | None = None) -> torch.Tensor:
    """Joint attention with cross-frame video-to-video attention removed.

    query, key (B, H, S, D) and value (B, H, S, Dv) hold S = text_len + F * tokens_per_frame tokens,
    text first or last, video frame-major. Video queries of frame f attend to [text; frame f]; text
    queries attend to everything. ``key_mask`` (B, S) bool (True = may be attended) drops padded
    keys. Returns (B, H, S, Dv) in the input order.
    """
    b, h, s, _ = query.shape
    n = s - text_len
    p = tokens_per_frame
    if p <= 0 or n % p:
        raise ValueError(f"{n} video tokens do not split into frames of {p} tokens")
    f = n // p
    text = slice(0, text_len) if text_first else slice(n, s)
    video = slice(text_len, s) if text_first else slice(0, n)

    def per_frame(x):  # (B, H, S, D) -> video (B, H, F, P, D), text repeated per frame (B, H, F, L, D)
        return x[:, :, video].unflatten(2, (f, p)), x[:, :, text].unsqueeze(2).expand(-1, -1, f, -1, -1)

    qv = query[:, :, video].unflatten(2, (f, p))
    kv, kt = per_frame(key)
    vv, vt = per_frame(value)
    keys = torch.cat([kt, kv], dim=3).flatten(1, 2)  # (B, H * F, L + P, D)
    values = torch.cat([vt, vv], dim=3).flatten(1, 2)
    frame_mask = text_mask = None
    if key_mask is not None:
        km = key_mask.bool()
        allowed = torch.cat([km[:, text].unsqueeze(1).expand(-1, f, -1), km[:, video].unflatten(1, (f, p))], dim=2)
        frame_mask = allowed.unsqueeze(1).expand(-1, h, -1, -1).flatten(1, 2).unsqueeze(2)  # (B, H * F, 1, L + P)
        text_mask = km[:, None, None, :]
    out_video = F.scaled_dot_product_attention(qv.flatten(1, 2), keys, values, attn_mask=frame_mask, scale=scale)
    out_video = out_video.unflatten(1, (h, f)).flatten(2, 3)  # (B, H, N, Dv)
    out_text = F.scaled_dot_product_attention(query[:, :, text], key, value, attn_mask=text_mask, scale=scale)
    parts = [out_text, out_video] if text_first else [out_video, out_text]
    return torch.cat(parts, dim=2)


# ----- the perturbed forward of each family, mirroring its stock processor -------------------------
def _cogvideox_perturbed(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                         tokens_per_frame):
    """CogVideoXAttnProcessor2_0 with frame-local attention: [text, video], q/k norm per head, RoPE on video."""
    if attention_mask is not None:
        raise NotImplementedError("CogVideoX's transformer passes no attention mask; CAG does not combine with one")
    text_len = encoder_hidden_states.size(1)
    x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    b = x.shape[0]
    query, key, value = (proj(x).unflatten(2, (attn.heads, -1)).transpose(1, 2)
                         for proj in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if image_rotary_emb is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        query = torch.cat([query[:, :, :text_len], apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)], 2)
        key = torch.cat([key[:, :, :text_len], apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)], 2)
    out = frame_local_attention(query, key, value, text_len, True, tokens_per_frame)
    out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3])
    out = attn.to_out[1](attn.to_out[0](out))
    encoder_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
    return video_out, encoder_out


def _hunyuan_perturbed(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                       tokens_per_frame):
    """HunyuanVideoAttnProcessor2_0 with frame-local attention: [video, text], dual- or single-stream."""
    from diffusers.models.embeddings import apply_rotary_emb

    text_len = encoder_hidden_states.shape[1]
    dual = attn.add_q_proj is not None
    x = hidden_states if dual else torch.cat([hidden_states, encoder_hidden_states], dim=1)
    query, key, value = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if image_rotary_emb is not None:
        rope = lambda t: apply_rotary_emb(t, image_rotary_emb, sequence_dim=1)  # noqa: E731
        if dual:
            query, key = rope(query), rope(key)
        else:
            query = torch.cat([rope(query[:, :-text_len]), query[:, -text_len:]], dim=1)
            key = torch.cat([rope(key[:, :-text_len]), key[:, -text_len:]], dim=1)
    if dual:
        enc = [proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
               for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
        if attn.norm_added_q is not None:
            enc[0] = attn.norm_added_q(enc[0])
        if attn.norm_added_k is not None:
            enc[1] = attn.norm_added_k(enc[1])
        query, key, value = (torch.cat([a, e], dim=1) for a, e in zip((query, key, value), enc))
    key_mask = None
    if attention_mask is not None:  # the transformer's key-padding mask (B, 1, 1, S)
        key_mask = attention_mask.reshape(attention_mask.shape[0], -1)
    out = frame_local_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), text_len, False,
                                tokens_per_frame, key_mask=key_mask)
    out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
    video_out, encoder_out = out[:, :-text_len], out[:, -text_len:]
    if getattr(attn, "to_out", None) is not None:
        video_out = attn.to_out[1](attn.to_out[0](video_out))
    if getattr(attn, "to_add_out", None) is not None:
        encoder_out = attn.to_add_out(encoder_out)
    return video_out, encoder_out


@dataclass
class PerturbationState:
    """Shared by the processors of one installation; the guidance step sets it before each forward.

    ``perturbed_from``: first perturbed batch row (None: no row is perturbed, every layer is stock);
    ``tokens_per_frame``: video tokens of one latent frame in this forward.
    """

    perturbed_from: int | None = None
    tokens_per_frame: int = 0


class CrossFramePerturbedProcessor:
    """Wraps one layer's stock processor; perturbs the batch rows from ``state.perturbed_from`` on."""

    def __init__(self, stock, state: PerturbationState, perturbed_forward):
        self.stock = stock
        self.state = state
        self.perturbed_forward = perturbed_forward

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        start = self.state.perturbed_from
        b = hidden_states.shape[0]
        if start is None or start >= b:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        def rows(t, part):
            if t is None or t.shape[0] != b:  # batch-independent (or absent) arguments go to both parts whole
                return t
            return t[part]

        stock_part, perturbed_part = slice(0, start), slice(start, b)
        perturbed = self.perturbed_forward(attn, hidden_states[perturbed_part],
                                           rows(encoder_hidden_states, perturbed_part),
                                           rows(attention_mask, perturbed_part), image_rotary_emb,
                                           self.state.tokens_per_frame)
        if start == 0:
            return perturbed
        stock = self.stock(attn, hidden_states[stock_part], rows(encoder_hidden_states, stock_part),
                           rows(attention_mask, stock_part), image_rotary_emb)
        return tuple(torch.cat([s, p], dim=0) for s, p in zip(stock, perturbed))


class CrossFrameAttentionRemoval:
    """Context manager installing :class:`CrossFramePerturbedProcessor` on ``layers`` of ``backbone``.

    ``removal.state`` says which rows are perturbed; with ``perturbed_from=None`` (the default) the
    model computes exactly what it computes without the processors.
    """

    def __init__(self, backbone: Backbone, layers):
        check_cag_support(backbone)
        self.backbone = backbone
        self.layers = sorted(set(backbone.check_layers(list(layers))))
        if not self.layers:
            raise UserError("CAG needs at least one layer; pass --cag-layers L [L ...] or --cag-layers auto")
        self.state = PerturbationState()
        self._forward = _cogvideox_perturbed if backbone.family in _JOINT_TEXT_FIRST else _hunyuan_perturbed
        self._saved: dict[int, object] = {}

    def __enter__(self):
        self._saved = self.backbone.swap_processors(
            self.layers, lambda _layer, stock: CrossFramePerturbedProcessor(stock, self.state, self._forward))
        return self

    def __exit__(self, *exc):
        self.backbone.restore_processors(self._saved)
        self._saved = {}
        self.state.perturbed_from = None
        return False

    def tokens_per_frame(self, latents: torch.Tensor) -> int:
        g = self.backbone.geometry(latents, text_tokens=0)
        return g.grid_h * g.grid_w


# ----- the guidance step ------------------------------------------------------------------------
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

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, timestep, step_index: int) -> torch.Tensor:
        names = self.branches(step_index)
        if self.config.sequential_branches:
            preds = [self._forward(latents, timestep, [n])[0] for n in names]
        else:
            preds = self._forward(latents, timestep, names)
        by_name = dict(zip(names, preds))
        return combine(by_name["cond"], by_name.get("uncond"), by_name.get("perturbed"), self.config.cfg_scale,
                       self.config.cag_scale)
