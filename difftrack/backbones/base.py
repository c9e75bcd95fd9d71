"""The interface every backbone adapter implements.

An adapter wraps stock diffusers components (transformer, VAE, text encoder, tokenizer,
scheduler) and knows the few things that differ between model families: where text sits in the
sequence, which attention modules are "layers", how video maps to latents, and how to rebuild
per-head q/k (after q/k norm and RoPE) from what the stock processor computes. Mixins, one module each,
hold the other jobs: video <-> latents (``latents``), the sampler's schedule (``schedules``), where the
models live (``offload``), the method's defaults (``defaults``) and the model's settings files (``settings``).

Module bodies here and in the family files never import torch or diffusers (methods do, when they run), so
that the registry's facts are readable in a command's argument checks without them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from difftrack.backbones.defaults import MethodDefaults
from difftrack.backbones.latents import VideoLatents
from difftrack.backbones.offload import Component, ModelOffload
from difftrack.backbones.schedules import SamplerSchedule
from difftrack.backbones.settings import ModelSettings
from difftrack.errors import UserError, check_index_range
from difftrack.geometry import TokenGeometry

if TYPE_CHECKING:
    import torch


@dataclass
class ProcessorCall:
    """What a stock attention processor was called with, plus the sub-module outputs we hooked."""

    hidden_states: torch.Tensor
    encoder_hidden_states: torch.Tensor | None
    rotary: Any
    hooked: dict[str, torch.Tensor]


class Backbone(VideoLatents, SamplerSchedule, ModelOffload, MethodDefaults, ModelSettings):
    """Base class of backbone adapters. Subclasses set the class attributes and implement the hooks."""

    text_encoder = Component()

    family: ClassVar[str] = ""
    text_position: ClassVar[str] = "first"
    # The names of the VAE config's (spatial, temporal) compression; None: spatial from its levels, temporal 1.
    vae_compression_keys: ClassVar[tuple[str, str] | None] = None
    trained_latent_frames: ClassVar[int] = 13  # latent frames of the stock pipeline's default video
    # (frames, height, width) the stock pipeline generates by default, for configs that record no sample size.
    pipeline_default_size: ClassVar[tuple[int, int, int] | None] = None
    # The diffusers pipeline class whose own prompt encoding the adapter reuses (:attr:`pipeline`), and its
    # settings (model_index.json entries that are no component).
    stock_pipeline: ClassVar[str] = ""
    pipeline_settings: ClassVar[dict] = {}
    takes_image: ClassVar[bool] = False  # an image-to-video model needs the first frame (`generate --image`)
    # Why CAG cannot apply to this family (None: it can, through perturbed_attention).
    cag_refusal: ClassVar[str | None] = None

    def __init__(self, name: str, transformer, scheduler, vae=None, text_encoder=None, tokenizer=None, source: str = ""):
        self.name = name
        self.transformer = transformer
        self.scheduler = scheduler
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.source = source
        # The stock VAEs' own memory switches: one sample of the batch at a time (frame-as-latent encodes
        # every frame as a sample) and overlapping spatial tiles above the VAE's tile size.
        for switch in ("enable_slicing", "enable_tiling"):
            if hasattr(vae, switch):
                getattr(vae, switch)()
        self._pipeline = None

    # ----- structure ---------------------------------------------------------------------------
    @property
    def layers(self) -> list[torch.nn.Module]:
        """The attention modules that count as layers, in forward order."""
        raise NotImplementedError

    def swap_processors(self, layers, wrap) -> dict:
        """Install ``wrap(layer, stock_processor)`` as the processor of each of ``layers``; returns the
        replaced processors for :meth:`restore_processors`."""
        modules = self.layers
        saved = {}
        for layer in layers:
            saved[layer] = modules[layer].processor
            modules[layer].set_processor(wrap(layer, saved[layer]))
        return saved

    def restore_processors(self, saved: dict) -> None:
        modules = self.layers
        for layer, processor in saved.items():
            modules[layer].set_processor(processor)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def heads(self) -> int:
        return self.layers[0].heads

    @property
    def dtype(self) -> torch.dtype:
        # diffusers' own reading: modules it keeps in float32 (Wan's norms, embedders) do not count
        return self.transformer.dtype

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along one axis (the VAE's downsampling; 1 for a pixel-space model)."""
        if self.vae is None:
            return 1
        if self.vae_compression_keys:
            return getattr(self.vae.config, self.vae_compression_keys[0])
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        """RGB frames per latent frame."""
        return getattr(self.vae.config, self.vae_compression_keys[1]) if self.vae_compression_keys else 1

    @property
    def patch_size(self) -> int:
        return self.transformer.config.patch_size

    @property
    def temporal_patch(self) -> int:
        """Latent frames per token (1 but for CogVideoX 1.5's temporal patches)."""
        return 1

    def latent_frame_padding(self, latent_frames: int) -> int:
        """Latent frames the stock pipeline adds in front of ``latent_frames`` (and drops before decoding) so
        that they split into whole temporal patches."""
        return -latent_frames % self.temporal_patch

    @property
    def max_frames(self) -> int:
        """Latent frames one forward takes in the model's trained setting."""
        return self.trained_latent_frames

    @property
    def frame_window(self) -> int:
        """RGB frames one forward takes when each is its own latent frame (the tracking window): one a token
        frame, as many as the trained setting has token frames."""
        return -(-self.max_frames // self.temporal_patch)

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The resolution a video of (height, width) is resized to before encoding."""
        m = self.spatial_compression * self.patch_size
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def check_layers(self, layers) -> list[int]:
        return check_index_range("layer", layers, self.num_layers)

    # ----- geometry ----------------------------------------------------------------------------
    def geometry(self, latents: torch.Tensor, text_tokens: int, frame_size: tuple[int, int] | None = None,
                 frame_as_latent: bool = False, rgb_frames: int | None = None) -> TokenGeometry:
        """Geometry of one forward on ``latents`` (B, F, C, h, w); ``frame_size`` is the input (H, W) in pixels."""
        _, frames, _, h, w = latents.shape
        p_t = self.temporal_patch
        if not frame_as_latent:  # a token frame holds p_t latent frames, the first padded as the pipeline does
            frames = -(-frames // p_t)
        p = self.patch_size
        if h % p or w % p:
            raise UserError(f"latent size {h}x{w} is not divisible by the patch size {p}; resize the video so that "
                            f"its height and width are multiples of {p * self.spatial_compression} pixels")
        grid_h, grid_w = h // p, w // p
        if frame_size is None:
            frame_size = (h * self.spatial_compression, w * self.spatial_compression)
        stride = (frame_size[0] / grid_h, frame_size[1] / grid_w)
        return TokenGeometry(frames=frames, grid_h=grid_h, grid_w=grid_w, text_tokens=text_tokens,
                             text_position=self.text_position, stride_px=stride,
                             temporal_compression=1 if frame_as_latent else self.temporal_compression * p_t,
                             rgb_frames=rgb_frames)

    def generation_size(self, frames: int | None = None, height: int | None = None,
                        width: int | None = None) -> tuple[int, int, int]:
        """(frames, height, width) in pixels of a generated video: the model's trained sample size unless given."""
        cfg = self.transformer.config
        sc = 1 if self.vae is None else self.spatial_compression
        trained = {"frames": cfg.get("sample_frames"), "height": cfg.get("sample_height"),
                   "width": cfg.get("sample_width")}
        trained = {k: None if v is None else int(v) * (1 if k == "frames" else sc) for k, v in trained.items()}
        if self.pipeline_default_size and None in trained.values():
            trained = dict(zip(("frames", "height", "width"), self.pipeline_default_size))
        out = []
        for name, value in {"frames": frames, "height": height, "width": width}.items():
            if value is None:
                if trained[name] is None:
                    raise UserError(f"{self.name} does not record its trained {name}; pass --{name}")
                value = trained[name]
            if value < 1:
                raise UserError(f"--{name} must be positive, got {value}")
            out.append(int(value))
        return tuple(out)

    def image_conditioning(self, image: np.ndarray, latents: torch.Tensor) -> dict:
        """Extra ``predict`` arguments conditioning on ``image`` (uint8 (H, W, 3)) for ``latents``."""
        raise UserError(f"{self.name} is not an image-to-video model; drop --image")

    def check_frame_count(self, num_frames: int, frame_as_latent: bool = False) -> None:
        # With temporal patches a token frame spans temporal_compression * p_t RGB frames after the first.
        c = 1 if frame_as_latent else self.temporal_compression * self.temporal_patch
        if c > 1 and (num_frames - 1) % c:
            lo = (num_frames - 1) // c * c + 1
            raise UserError(f"{self.name} compresses time {c}x and takes 1 + {c}k frames; got {num_frames}: "
                            f"use {lo} or {lo + c} frames, or --frame-as-latent")

    # ----- text --------------------------------------------------------------------------------
    @property
    def pipeline(self):
        """A stock ``stock_pipeline`` over the same component objects, built on first use, for its own prompt
        encoding."""
        if self._pipeline is None:
            import inspect

            import diffusers

            cls = getattr(diffusers, self.stock_pipeline)
            components = {name: getattr(self, name) for name in inspect.signature(cls).parameters
                          if name not in self.pipeline_settings and hasattr(self, name)}
            self._pipeline = cls(**components, **self.pipeline_settings)
        return self._pipeline

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` that the (first) tokenizer can only read as its unknown token."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None:
            return []
        return [word for word in dict.fromkeys(re.findall(r"\w+", prompt))
                if unk in self.tokenizer(word, add_special_tokens=False)["input_ids"]]

    def check_prompt_words(self, prompts: list[str]) -> None:
        """Refuse prompts with words the tokenizer cannot read (word-level vocabularies, such as the
        embedded models'), naming the vocabulary when it is small enough to print."""
        unknown = list(dict.fromkeys(w for p in prompts for w in self.unknown_words(p)))
        if not unknown:
            return
        special = set(getattr(self.tokenizer, "all_special_tokens", []))
        words = sorted(set(self.tokenizer.get_vocab()) - special)
        known = f"; it knows: {' '.join(words)}" if len(words) <= 200 else ""
        raise UserError(f"{self.name} does not know the word(s) {', '.join(unknown)}{known}")

    def encode_conditioning(self, prompts: list[str]) -> tuple[torch.Tensor, dict]:
        """Text embeddings plus any further keyword arguments :meth:`predict` needs for these prompts
        (HunyuanVideo: the CLIP pooled projection and the text mask); ``predict(latents, t, embeds, **extras)``."""
        return self.encode_prompt(prompts), {}

    def empty_conditioning(self) -> tuple[torch.Tensor, dict]:
        """``encode_conditioning([""])``, cached on disk per model and text-encoder revision
        (:mod:`difftrack.backbones.prompt_cache`), so that later runs never load the text encoder."""
        from difftrack.backbones import prompt_cache

        return prompt_cache.empty_conditioning(self)

    # ----- one denoising forward ---------------------------------------------------------------
    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor, **extra) -> torch.Tensor:
        """One transformer forward; returns the model's own prediction (noise, v or flow) shaped like latents."""
        raise NotImplementedError

    # ----- capture -----------------------------------------------------------------------------
    def capture_targets(self, attn) -> list[str]:
        """Names of the attention sub-modules whose outputs :meth:`split_descriptors` needs."""
        raise NotImplementedError

    def video_feature(self, attn, call: ProcessorCall, output) -> torch.Tensor:
        """The attention output before ``to_out`` for video tokens, (B, N, H * D)."""
        raise NotImplementedError

    def split_descriptors(self, attn, call: ProcessorCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rebuild (query_video, key_video, key_text) as (B, H, N, D) after q/k norm and RoPE."""
        raise NotImplementedError

    # ----- CAG ---------------------------------------------------------------------------------
    def perturbed_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                            tokens_per_frame):
        """The stock processor's computation with cross-frame video-to-video attention removed
        (``difftrack.backbones.attention.frame_local_attention``); returns what the stock processor returns."""
        raise NotImplementedError

    def cag_unsupported_reason(self) -> str | None:
        if self.cag_refusal:
            return self.cag_refusal
        if type(self).perturbed_attention is Backbone.perturbed_attention:
            return f"the {self.family} adapter has no frame-local attention processor for CAG; use --guidance cfg"
        return None

    def describe(self) -> dict:
        cfg = self.transformer.config
        return {"name": self.name, "family": self.family, "layers": self.num_layers, "heads": self.heads,
                "head_dim": cfg.attention_head_dim, "text_position": self.text_position, "source": self.source}
