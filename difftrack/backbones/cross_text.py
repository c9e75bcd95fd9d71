"""Shared behaviour of the families whose text enters through separate cross-attention (Wan, LTX-Video).

Their 3D self-attention ``attn1`` sees video tokens only, so there is no text key in the joint sequence,
and CAG (which restricts the joint attention to text and the token's own frame) has nothing to act on.
Prompts are encoded by the stock pipeline, built lazily over the same component objects.
"""

from __future__ import annotations

from typing import ClassVar


class CrossAttentionTextMixin:
    text_position = "separate"
    display_name: ClassVar[str] = ""
    default_max_sequence_length: ClassVar[int] = 512

    def __init__(self, name, transformer, scheduler, vae=None, text_encoder=None, tokenizer=None, source="",
                 max_sequence_length: int | None = None):
        super().__init__(name, transformer, scheduler, vae, text_encoder, tokenizer, source)
        self.max_sequence_length = max_sequence_length or self.default_max_sequence_length

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.cag_refusal = (f"{cls.display_name} keeps text in separate cross-attention, so CAG (video attends only to "
                           f"text and its own frame in the joint 3D attention) has no joint attention to restrict; "
                           f"use --guidance cfg")
