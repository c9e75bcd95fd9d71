"""The interface every backbone adapter implements.

An adapter wraps stock diffusers components (transformer, VAE, text encoder, tokenizer,
scheduler) and knows the few things that differ between model families: where text sits in the
sequence, which attention modules are "layers", how video maps to latents, and how to rebuild
per-head q/k (after q/k norm and RoPE) from what the stock processor computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from difftrack.backbones import settings
from difftrack.errors import UserError
from difftrack.geometry import TokenGeometry


@dataclass
class ProcessorCall:
    """What a stock attention processor was called with, plus the sub-module outputs we hooked."""

    hidden_states: torch.Tensor
    encoder_hidden_states: torch.Tensor | None
    rotary: Any
    hooked: dict[str, torch.Tensor]


class Deferred:
    """A component not loaded yet: ``loader()`` builds it on first use (text encoders, which tracking and
    analysis of real videos never need once the empty prompt's embedding is cached)."""

    def __init__(self, loader: Callable[[], Any]):
        self.loader = loader


class Component:
    """An adapter attribute that may hold a :class:`Deferred`; reading it loads the component once."""

    def __set_name__(self, owner, name):
        self.slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        value = obj.__dict__.get(self.slot)
        if isinstance(value, Deferred):
            value = obj.__dict__[self.slot] = obj.offload_if_enabled(value.loader())
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value

    def loaded(self, obj) -> bool:
        return not isinstance(obj.__dict__.get(self.slot), Deferred)


class Backbone:
    """Base class of backbone adapters. Subclasses set the class attributes and implement the hooks."""

    text_encoder = Component()

    family: ClassVar[str] = ""
    text_position: ClassVar[str] = "first"
    # The names of the VAE config's (spatial, temporal) compression; None: spatial from its levels, temporal 1.
    vae_compression_keys: ClassVar[tuple[str, str] | None] = None
    trained_latent_frames: ClassVar[int] = 13  # latent frames of the stock pipeline's default video
    # (frames, height, width) the stock pipeline generates by default, for configs that record no sample size.
    pipeline_default_size: ClassVar[tuple[int, int, int] | None] = None

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
        self._execution_device: torch.device | None = None
        self._offload_hooks: list = []  # accelerate's hooks, one a model

    # ----- model CPU offload -----------------------------------------------------------------------
    def enable_model_cpu_offload(self, device) -> None:
        """diffusers' model CPU offload: every model (transformer, VAE, text encoders, those loaded later
        too) stays in CPU memory and moves to ``device`` only while it runs, one model there at a time
        (accelerate's offload hooks). The peak is the largest model instead of their sum; each switch costs
        a host-to-device copy of that model's weights."""
        self._execution_device = torch.device(device)
        for model in [self.transformer, self.vae] + [getattr(self, name) for name in self.loaded_text_encoders()]:
            self.offload_if_enabled(model)

    def offload_if_enabled(self, model):
        """Give ``model`` an offload hook when model CPU offload is on (a no-op otherwise). The hook runs
        before ``forward`` and before the VAEs' ``encode``/``decode`` (diffusers' ``apply_forward_hook``)."""
        if self._execution_device is None or model is None:
            return model
        from accelerate.hooks import CpuOffload, UserCpuOffloadHook, add_hook_to_module

        hooks = self._offload_hooks

        class OffloadTheOthers(CpuOffload):
            def pre_forward(self, module, *args, **kwargs):
                for other in hooks:
                    if other.model is not module:
                        other.offload()
                return super().pre_forward(module, *args, **kwargs)

        hook = OffloadTheOthers(execution_device=self._execution_device)
        add_hook_to_module(model, hook, append=True)
        hooks.append(UserCpuOffloadHook(model, hook))
        return model

    def loaded_text_encoders(self) -> list[str]:
        """Names of the text-encoder components already loaded (deferred ones load on first use)."""
        names = {name for cls in type(self).__mro__ for name, attr in vars(cls).items() if isinstance(attr, Component)}
        return sorted(name for name in names if getattr(type(self), name).loaded(self))

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
    def device(self) -> torch.device:
        """Where the computation runs (under model CPU offload, the device models move to while they run)."""
        if self._execution_device is not None:
            return self._execution_device
        return next(self.transformer.parameters()).device

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

    # The method's defaults for known architectures, keyed by (attention layers, heads) of the transformer
    # config, so that a registry name, a hub id and a local directory of the same weights get the same:
    # {key: {"track_layers": (...), "track_step": (step, num_steps), "cag_layers": (...)}}.
    method_defaults: ClassVar[dict[tuple[int, int], dict]] = {}
    fallback_track_step: ClassVar[tuple[int, int]] = (49, 50)
    # The tracker `difftrack track` runs by default: the paper's procedure ("paper") unless difftrack's own
    # tracker has settings calibrated for the family (``tracker_settings``).
    default_tracker: ClassVar[str] = "paper"

    def tracker_settings(self) -> dict:
        """Settings of difftrack's own tracker calibrated for this model (TrackerConfig fields); none by default,
        so a real checkpoint never inherits values chosen on another model."""
        return {}

    @classmethod
    def architecture(cls, config) -> tuple[int, int]:
        """(attention layers, heads) of a transformer config: the key of ``method_defaults``."""
        return config["num_layers"], config["num_attention_heads"]

    @classmethod
    def defaults_for(cls, config) -> dict:
        """The method's tracking layers, (step, schedule length) and CAG layers for a transformer config:
        the published ones for a known architecture, else the middle layer(s) and ``fallback_track_step``.
        Readable from the config alone, so `difftrack models` shows them without loading weights."""
        return cls.defaults_for_architecture(*cls.architecture(config))

    @classmethod
    def defaults_for_architecture(cls, n: int, heads: int) -> dict:
        """:meth:`defaults_for` of a transformer with ``n`` attention layers of ``heads`` heads."""
        known = cls.method_defaults.get((n, heads), {})
        middle = sorted({max(n // 2 - 1, 0), n // 2}) if n > 1 else [0]
        return {"track_layers": list(known.get("track_layers", ())) or [n // 2],
                "track_step": tuple(known.get("track_step", cls.fallback_track_step)),
                "cag_layers": list(known.get("cag_layers", ())) or middle,
                "tracker": cls.default_tracker,
                # (height, width) and frames per forward of the paper's tracking when they are not the model's
                # trained ones (None: the trained ones)
                "paper_size": known.get("paper_size"), "paper_chunk": known.get("paper_chunk")}

    def track_layers(self) -> list[int]:
        """Tracking layers without an analysis recommendation: the method's for a known architecture, else
        the middle layer."""
        return self.defaults_for(self.transformer.config)["track_layers"]

    @property
    def default_track_step(self) -> tuple[int, int]:
        """(step index, schedule length) tracking reads without a recommendation."""
        return self.defaults_for(self.transformer.config)["track_step"]

    def paper_geometry(self) -> tuple[tuple[int, int], int]:
        """((height, width), frames per forward) of the paper's tracking procedure: the sizes its release used
        for a known architecture, else the model's trained size and tracking window."""
        known = self.defaults_for(self.transformer.config)
        size = known["paper_size"] or self.generation_size()[1:]
        return tuple(size), known["paper_chunk"] or self.frame_window

    def default_cag_layers(self) -> list[int]:
        """The method's CAG layers for a known architecture; otherwise the two middle layers."""
        return self.check_layers(self.defaults_for(self.transformer.config)["cag_layers"])

    def shipped_recommendation(self) -> Path | None:
        """recommendation.json shipped inside a local model directory (what `--layers auto` reads by default)."""
        path = Path(self.source) / "recommendation.json" if self.source else None
        return path if path is not None and path.is_file() else None

    def recommendation(self, path=None) -> tuple[list[int], list[int] | None, int | None]:
        """Layers, steps and the schedule length they index, as `difftrack analyze` recommends them: from
        ``path`` (recommendation.json or its directory), or the one shipped with the model."""
        if path is None:
            path = self.shipped_recommendation()
            if path is None:
                raise UserError(f"`auto` layers need --recommendation DIR (from `difftrack analyze --out DIR`); "
                                f"{self.name} ships no recommendation.json")
        rec = settings.read_recommendation(path)
        return self.check_layers(rec["layers"]), rec.get("steps"), rec.get("num_steps")

    def occlusion_thresholds(self) -> dict[str, float]:
        """The tracker's calibrated occlusion thresholds for this model (difftrack/calibration/)."""
        return settings.occlusion_thresholds(self.name)

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The resolution a video of (height, width) is resized to before encoding."""
        m = self.spatial_compression * self.patch_size
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def schedule(self, num_steps: int, device=None):
        """A copy of the scheduler set to the sampler's ``num_steps``-step schedule: what `generate` steps
        through and what tracking and analysis index, one schedule for both."""
        import copy

        sched = copy.deepcopy(self.scheduler)
        self.set_timesteps(sched, num_steps, device)
        return sched

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        """How the family's stock pipeline sets its schedule (adapters override)."""
        scheduler.set_timesteps(num_steps, device=device)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The sampler's timestep schedule; step index i of ``num_steps`` is ``timesteps(num_steps)[i]``."""
        return self.schedule(num_steps).timesteps

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        """Forward-diffuse clean latents to ``timestep``.

        Flow models: x_t = (1 - sigma) x_0 + sigma * noise with sigma = t / num_train_timesteps, written out
        because the stock flow schedulers' scale_noise/add_noise only accept timesteps of the schedule
        currently set on the live scheduler. Others: the stock scheduler's own add_noise.
        """
        if self.prediction_type() == "flow":
            sigma = torch.as_tensor(timestep, device=latents.device, dtype=torch.float64).reshape(-1)
            sigma = (sigma / self.scheduler.config.num_train_timesteps).float()
            sigma = sigma.view(-1, *([1] * (latents.dim() - 1)))
            return ((1 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)
        t = torch.as_tensor(timestep, device=latents.device).reshape(1)
        return self.scheduler.add_noise(latents, noise, t.long() if not t.is_floating_point() else t)

    def check_layers(self, layers) -> list[int]:
        from difftrack.errors import check_index_range

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

    # An image-to-video model needs the first frame as an image (`generate --image`).
    takes_image: ClassVar[bool] = False

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

    # ----- video <-> latents -------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, frame_as_latent: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels (B, T, 3, H, W) in [-1, 1] -> latents (B, F, C, h, w) as the transformer takes them.

        The stock video VAEs take (B, C, T, H, W); ``frame_as_latent`` encodes every RGB frame as a
        one-frame video, so latent frame f is RGB frame f (:meth:`frames_as_tokens` makes them model input).
        Latents are the posterior's mode, or with ``generator`` (frame as latent only) a sample of it drawn
        frame by frame in order, as the DiffTrack release encodes.
        """
        b, t = video.shape[:2]
        # self.device, not the VAE's: under model CPU offload the VAE waits on the CPU until its hook moves it
        # (and only it, not its input) to the execution device.
        video = video.to(self.device, self.vae.dtype)
        if generator is not None and not frame_as_latent:
            raise ValueError("posterior sampling is implemented for frame-as-latent encoding only")
        if frame_as_latent:
            frames = video.reshape(b * t, 1, *video.shape[2:]).permute(0, 2, 1, 3, 4)
            if generator is None:
                lat = self.vae.encode(frames).latent_dist.mode()  # (B*T, C, 1, h, w)
            else:
                lat = torch.cat([self.vae.encode(f[None]).latent_dist.sample(generator) for f in frames])
            lat = lat.reshape(b, t, *lat.shape[1:]).squeeze(3)
        else:
            self.check_frame_count(t)
            lat = self.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode().permute(0, 2, 1, 3, 4)
            # Whole temporal patches, padded in front as the stock pipeline pads (with the first frame here, a
            # real video having no noise to pad with), so that token frame j ends on latent frame 2j.
            lat = torch.cat([lat[:, :1]] * self.latent_frame_padding(lat.shape[1]) + [lat], dim=1)
        return self.normalize_latents(lat).to(self.dtype)

    def frames_as_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents with one latent frame per RGB frame (``frame_as_latent``) -> what the transformer takes so
        that every token frame holds one of them: each repeated ``temporal_patch`` times (as is for 1)."""
        return latents.repeat_interleave(self.temporal_patch, dim=1) if self.temporal_patch > 1 else latents

    @torch.no_grad()
    def encode_frames(self, video: np.ndarray, frame_as_latent: bool = False) -> torch.Tensor:
        """uint8 RGB frames (T, H, W, 3) of any size -> latents (1, F, C, h, w): resized (area) to
        :meth:`working_size`, scaled to [-1, 1], encoded on the backbone's device. The one way a real
        video enters a model (tracking, analysis, probing)."""
        import cv2

        height, width = video.shape[1:3]
        wh, ww = self.working_size(height, width)
        frames = np.stack([cv2.resize(f, (ww, wh), interpolation=cv2.INTER_AREA) for f in video])
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None]
        return self.encode_video(pixels.to(self.device), frame_as_latent=frame_as_latent)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, F, C, h, w) -> pixels (B, T, 3, H, W) in [-1, 1]."""
        lat = self.denormalize_latents(latents.to(self.vae.dtype)).permute(0, 2, 1, 3, 4)
        return self.vae.decode(lat).sample.permute(0, 2, 1, 3, 4).clamp(-1, 1)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> the transformer's latent space (the VAE's scaling factor by default)."""
        return latents * self.vae.config.scaling_factor

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.vae.config.scaling_factor

    # ----- text --------------------------------------------------------------------------------
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

    def prediction_type(self) -> str:
        return getattr(self.scheduler.config, "prediction_type", "epsilon")

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
    # Why CAG cannot apply to this family (None: it can, through perturbed_attention).
    cag_refusal: ClassVar[str | None] = None

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

    def revision(self) -> str:
        """Which weights these are: a hub snapshot's commit (the cache's snapshots/<commit>), else a digest of the
        directory's model_index.json and transformer config (equal weights' directories share configs, so it
        names the architecture and the source path names the copy)."""
        import hashlib

        path = Path(self.source) if self.source else None
        if path is not None and path.parent.name == "snapshots":
            return path.name
        digest = hashlib.sha256()
        for part in ("model_index.json", "transformer/config.json"):
            if path is not None and (path / part).is_file():
                digest.update((path / part).read_bytes())
        return f"config-sha256:{digest.hexdigest()[:16]}"

    def describe(self) -> dict:
        cfg = self.transformer.config
        return {"name": self.name, "family": self.family, "layers": self.num_layers, "heads": self.heads,
                "head_dim": cfg.attention_head_dim, "text_position": self.text_position, "source": self.source}
