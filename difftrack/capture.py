"""Capture per-head q/k (after q/k norm and RoPE) and intermediate features from stock attention modules.

The capture wraps the *stock* processor of each requested layer: the stock processor still computes
the attention output (so the model output is bit-identical to running without capture), while
forward hooks on its q/k norm sub-modules copy their outputs. The adapter then applies the
model's own RoPE to those copies and splits video from text tokens. Layers or steps that were not
requested keep their stock processor and cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from difftrack.backbones.base import Backbone, ProcessorCall


class StopForward(Exception):
    """Raised after the deepest requested layer when the rest of the forward is not needed."""


@dataclass
class Descriptors:
    """Per-head descriptors of one (layer, step), video tokens in frame-major order.

    query, key: (B, H, N, D); text_key: (B, H, L, D) for joint-attention models, None when text goes
    through separate cross-attention; feature: (B, N, H * D), the attention output before ``to_out``.
    """

    layer: int
    step: int
    query: torch.Tensor
    key: torch.Tensor
    text_key: torch.Tensor | None
    feature: torch.Tensor | None


class _CaptureProcessor:
    """Wraps one layer's stock processor; its call signature covers every supported family's RoPE argument."""

    def __init__(self, capture: "DescriptorCapture", layer: int, stock):
        self.capture = capture
        self.layer = layer
        self.stock = stock

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        cap = self.capture
        if not cap.wants_step(cap.step):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        hooked: dict[str, torch.Tensor] = {}
        handles = []
        for name in cap.backbone.capture_targets(attn):
            handles.append(attn.get_submodule(name).register_forward_hook(_store_output(hooked, name)))
        if cap.features and getattr(attn, "to_out", None) is not None:
            handles.append(attn.to_out[0].register_forward_pre_hook(_store_input(hooked, "to_out_in")))
        try:
            output = self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        finally:
            for h in handles:
                h.remove()
        call = ProcessorCall(hidden_states, encoder_hidden_states, image_rotary_emb, hooked)
        cap._record(self.layer, attn, call, output)
        return output


def _store_output(store, name):
    def hook(_module, _inputs, output):
        store[name] = output.detach().clone()

    return hook


def _store_input(store, name):
    def hook(_module, inputs):
        store[name] = inputs[0].detach().clone()

    return hook


class DescriptorCapture:
    """Context manager that records descriptors of ``layers`` at ``steps`` (None: every step).

    Set ``capture.step`` before each forward. ``batch_rows`` keeps only those batch rows (for example
    the conditional half of a CFG batch). ``on_capture(desc)`` is called with each record; when it
    returns True the record is considered consumed and not stored (for reductions on the fly).
    ``early_exit`` raises :class:`StopForward` after the deepest requested layer; use
    :meth:`run` to call a forward that may stop early.
    """

    def __init__(self, backbone: Backbone, layers: Iterable[int], steps: Iterable[int] | None = None,
                 features: bool = False, batch_rows: slice | list[int] | None = None, early_exit: bool = False,
                 on_capture: Callable[[Descriptors], bool] | None = None):
        self.backbone = backbone
        self.layers = sorted(set(backbone.check_layers(list(layers))))
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.features = features
        self.batch_rows = batch_rows
        self.early_exit = early_exit
        self.on_capture = on_capture
        self.step = 0
        self.results: dict[tuple[int, int], Descriptors] = {}
        self._saved: dict[int, object] = {}

    def wants_step(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def __enter__(self):
        self._saved = self.backbone.swap_processors(self.layers, lambda layer, stock: _CaptureProcessor(self, layer, stock))
        return self

    def __exit__(self, *exc):
        self.backbone.restore_processors(self._saved)
        self._saved = {}
        return False

    def run(self, fn: Callable, *args, **kwargs):
        """Call ``fn``; returns its result, or None when the forward stopped early after the last layer."""
        try:
            return fn(*args, **kwargs)
        except StopForward:
            return None

    def _record(self, layer: int, attn, call: ProcessorCall, output) -> None:
        q, k, text_k = self.backbone.split_descriptors(attn, call)
        feature = self.backbone.video_feature(attn, call, output) if self.features else None
        rows = self.batch_rows
        if rows is not None:
            q, k = q[rows], k[rows]
            text_k = None if text_k is None else text_k[rows]
            feature = None if feature is None else feature[rows]
        desc = Descriptors(layer, self.step, q, k, text_k, feature)
        if not (self.on_capture is not None and self.on_capture(desc)):
            self.results[(layer, self.step)] = desc
        if self.early_exit and layer == self.layers[-1]:
            raise StopForward


def sample_descriptors(desc: torch.Tensor, points_tok: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample per-head descriptors (H, P, D) of one frame at token coordinates (N, 2) -> (H, N, D)."""
    h, w = grid
    heads, _, dim = desc.shape
    maps = desc.reshape(heads, h, w, dim).permute(0, 3, 1, 2).float()
    points_tok = points_tok.to(maps.device)  # query points may come from the CPU (analysis) or the GPU (tracker)
    norm = torch.stack([points_tok[:, 0] / w * 2 - 1, points_tok[:, 1] / h * 2 - 1], dim=-1).float()
    out = F.grid_sample(maps, norm.view(1, 1, -1, 2).expand(heads, -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=False)  # token centres at j + 0.5
    return out[:, :, 0, :].permute(0, 2, 1).to(desc.dtype)
