"""Cross-frame attention removal: the perturbed branch of Cross-Attention Guidance (CAG).

The chosen layers run with every video token attending only to the text and to the tokens of its
own latent frame; text tokens still attend everywhere. Each family's adapter mirrors its stock
processor in ``Backbone.perturbed_attention`` (on ``difftrack.backbones.attention``'s frame-local
attention); here it is installed. The processors wrap the stock attention modules of the chosen
layers only (the pattern of diffusers' PAG processors): batch rows before ``state.perturbed_from``
go through the stock processor untouched, the rows from there on are perturbed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from difftrack.backbones.base import Backbone
from difftrack.errors import UserError

if TYPE_CHECKING:
    import torch


def check_cag_support(backbone: Backbone) -> None:
    """Raise a one-line UserError when CAG is not defined for this backbone."""
    reason = backbone.cag_unsupported_reason()
    if reason:
        raise UserError(f"--guidance cag does not apply to {backbone.name}: {reason}")


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
        import torch

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
        self._saved: dict[int, object] = {}

    def __enter__(self):
        self._saved = self.backbone.swap_processors(
            self.layers, lambda _layer, stock: CrossFramePerturbedProcessor(stock, self.state,
                                                                     self.backbone.perturbed_attention))
        return self

    def __exit__(self, *exc):
        self.backbone.restore_processors(self._saved)
        self._saved = {}
        self.state.perturbed_from = None
        return False

    def tokens_per_frame(self, latents: torch.Tensor) -> int:
        g = self.backbone.geometry(latents, text_tokens=0)
        return g.grid_h * g.grid_w
