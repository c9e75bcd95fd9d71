"""Joint attention with cross-frame video-to-video attention removed: the maths every family's
perturbed processor (``Backbone.perturbed_attention``, used by CAG) shares.

It is expressed directly as per-frame block attention: the video queries of frame f go through one
SDPA call against the keys [text; frame f], batched over frames as (B, H * F, P, D); no mask over
the whole sequence is ever built. The masking acts on the logits, so each row renormalises over
what it may see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def frame_local_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, text_len: int,
                          text_first: bool, tokens_per_frame: int, key_mask: torch.Tensor | None = None,
                          scale: float | None = None) -> torch.Tensor:
    """Joint attention with cross-frame video-to-video attention removed.

    query, key (B, H, S, D) and value (B, H, S, Dv) hold S = text_len + F * tokens_per_frame tokens,
    text first or last, video frame-major. Video queries of frame f attend to [text; frame f]; text
    queries attend to everything. ``key_mask`` (B, S) bool (True = may be attended) drops padded
    keys. Returns (B, H, S, Dv) in the input order.
    """
    import torch
    import torch.nn.functional as F

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
