"""Shared behaviour of the flow-matching families (HunyuanVideo, Wan)."""

from __future__ import annotations


class FlowMatchingMixin:
    """Flow-matching backbones predict the flow (noise - clean sample) and noise by linear interpolation."""

    def prediction_type(self) -> str:
        return "flow"
