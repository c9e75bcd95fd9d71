"""DIFT-style feature extraction: noise a clip to a chosen step, run the denoiser once, read a block's activations.

Kinds of activation, all per video token on the (frame, row, column) token grid:

- ``query`` / ``key``: the attention's q and k after q/k norm and RoPE, heads concatenated
  (what the tracker matches);
- ``feature``: the attention output before ``to_out``, heads concatenated;
- ``block``: the output hidden states of the transformer block that holds the layer.

Video models see the whole clip (in windows of the model's trained length) in one forward each.
Image models see every frame as its own sample, so nothing is shared across frames: the image twin
folds the frames into batch rows of one call itself, and ``per_frame=True`` runs a video model
once per frame. Frames are encoded one latent frame per RGB frame, so feature frame t is frame t.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from difftrack.backbones import Backbone
from difftrack.capture import DescriptorCapture, StopForward
from difftrack.errors import UserError
from difftrack.noising import check_noising, prepare_latents

FEATURE_KINDS = ("query", "key", "feature", "block")
DEFAULT_NUM_STEPS = 50


@dataclass(frozen=True)
class FeatureSpec:
    """Which activations to read, and at which point of the noise schedule."""

    blocks: tuple[int, ...]
    kinds: tuple[str, ...] = ("block",)
    step: int = 49
    num_steps: int = DEFAULT_NUM_STEPS
    noise: str = "add"
    seed: int = 0
    per_frame: bool | None = None  # None: per frame exactly when the backbone is an image model
    window: int | None = None  # frames per forward for video models; None: the backbone's trained length


@dataclass
class FeatureSet:
    """Activations of one clip: ``maps[(kind, block)]`` float32 (T, grid_h, grid_w, C)."""

    maps: dict[tuple[str, int], np.ndarray]
    grid: tuple[int, int]
    stride_px: tuple[float, float]  # pixels of the input video per token, (y, x)
    frame_size: tuple[int, int]  # (H, W) of the input video
    timestep: float
    meta: dict

    def __getitem__(self, key: tuple[str, int]) -> np.ndarray:
        return self.maps[key]

    def to_npz_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"{kind}_{block}": value for (kind, block), value in self.maps.items()}
        arrays.update(grid=np.asarray(self.grid, np.int64), stride_px=np.asarray(self.stride_px, np.float64),
                      frame_size=np.asarray(self.frame_size, np.int64), timestep=np.float64(self.timestep),
                      meta=np.asarray(json.dumps(self.meta)))
        return arrays


def is_image_model(backbone: Backbone) -> bool:
    """An image model was trained on one frame per sample (the embedded image twin)."""
    return getattr(backbone, "frames_per_sample", None) == 1


def check_spec(backbone: Backbone, spec: FeatureSpec) -> None:
    backbone.check_layers(list(spec.blocks))
    check_noising(spec.noise, [spec.step], spec.num_steps)
    unknown = [k for k in spec.kinds if k not in FEATURE_KINDS]
    if unknown or not spec.kinds:
        raise UserError(f"unknown feature kind {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(FEATURE_KINDS)}")
    if spec.window is not None and spec.window < 1:
        raise UserError(f"--window must be at least 1 frame, got {spec.window}")


def block_modules(backbone: Backbone) -> list[torch.nn.Module]:
    """The transformer block that holds each attention layer (the layer's direct parent module)."""
    parents = {}
    for module in backbone.transformer.modules():
        for child in module.children():
            parents[id(child)] = module
    return [parents[id(attn)] for attn in backbone.layers]


def _video_tokens(output, tokens: int, text_position: str) -> torch.Tensor:
    """Video tokens (1, N, C) of a block's output (a tensor, or a tuple whose first item is the hidden states)."""
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if hidden.shape[0] > 1:
        # An image model that folded the clip's frames into batch rows (row = frame): unfold frame-major.
        hidden = hidden.reshape(1, -1, hidden.shape[-1])
    if hidden.shape[1] == tokens:
        return hidden
    # Single-stream blocks return text and video joined; cut the text off where the family puts it.
    return hidden[:, -tokens:] if text_position == "first" else hidden[:, :tokens]


class _BlockOutputs:
    """Forward hooks on blocks that copy their video tokens, and stop the forward after the deepest one."""

    def __init__(self, backbone: Backbone, blocks: list[int], tokens: int, stop_after: int):
        self.backbone, self.blocks, self.tokens, self.stop_after = backbone, blocks, tokens, stop_after
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        modules = block_modules(self.backbone)
        for b in sorted(set(self.blocks) | {self.stop_after}):
            self._handles.append(modules[b].register_forward_hook(self._hook(b)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def _hook(self, block: int):
        def hook(_module, _inputs, output):
            if block in self.blocks:
                self.outputs[block] = _video_tokens(output, self.tokens, self.backbone.text_position).detach().clone()
            if block == self.stop_after:
                raise StopForward

        return hook


@torch.no_grad()
def token_grid(backbone: Backbone, frame_size: tuple[int, int]) -> tuple[int, int]:
    """The token grid (rows, columns) the backbone puts on frames of ``frame_size`` (encodes one blank frame)."""
    latents = backbone.encode_frames(np.zeros((1, *frame_size, 3), np.uint8), frame_as_latent=True)
    geometry = backbone.geometry(latents, 0, frame_size=tuple(frame_size), frame_as_latent=True)
    return geometry.grid_h, geometry.grid_w


@torch.no_grad()
def extract_features(backbone: Backbone, video: np.ndarray, spec: FeatureSpec, progress: bool = False) -> FeatureSet:
    """Activations of ``spec.blocks`` for uint8 RGB frames (T, H, W, 3)."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise UserError(f"video must be uint8 RGB frames (T, H, W, 3), got {video.dtype} {video.shape}")
    check_spec(backbone, spec)
    num_frames, height, width = video.shape[:3]
    per_frame = is_image_model(backbone) if spec.per_frame is None else spec.per_frame
    if per_frame and is_image_model(backbone):
        window = num_frames  # the image model's predict runs each frame as its own batch row in one call
    else:
        window = 1 if per_frame else (spec.window or backbone.frame_window)

    latents = backbone.encode_frames(video, frame_as_latent=True)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(spec.seed)).to(latents)
    prompt, extras = backbone.empty_conditioning()
    geometry = backbone.geometry(latents[:, :1], prompt.shape[1], frame_size=(height, width), frame_as_latent=True)
    grid = (geometry.grid_h, geometry.grid_w)
    blocks = sorted(set(spec.blocks))
    attention_kinds = [k for k in spec.kinds if k != "block"]
    chunks: dict[tuple[str, int], list[torch.Tensor]] = {(k, b): [] for k in spec.kinds for b in blocks}
    timestep = backbone.timesteps(spec.num_steps)[spec.step]

    starts = range(0, num_frames, window)
    for start in tqdm(starts, desc="features", unit="forward", disable=not progress):
        frames = slice(start, min(start + window, num_frames))
        x, t = prepare_latents(backbone, backbone.frames_as_tokens(latents[:, frames]), spec.noise, spec.step,
                               spec.num_steps, backbone.frames_as_tokens(noise[:, frames]), (prompt, extras))
        tokens = latents[:, frames].shape[1] * geometry.tokens_per_frame
        capture = DescriptorCapture(backbone, blocks if attention_kinds else [], features="feature" in spec.kinds)
        with capture, _BlockOutputs(backbone, blocks if "block" in spec.kinds else [], tokens, blocks[-1]) as outs:
            capture.run(backbone.predict, x, t, prompt, **extras)
        for b in blocks:
            desc = capture.results.get((b, 0))
            for kind in spec.kinds:
                if kind == "block":
                    value = outs.outputs[b][0]
                elif kind == "feature":
                    value = desc.feature[0]
                else:
                    per_head = (desc.query if kind == "query" else desc.key)[0]  # (H, N, D)
                    value = per_head.permute(1, 0, 2).reshape(per_head.shape[1], -1)
                chunks[(kind, b)].append(value.float().reshape(-1, *grid, value.shape[-1]))
    maps = {key: torch.cat(parts).cpu().numpy() for key, parts in chunks.items()}
    meta = {"model": backbone.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
            "per_frame": per_frame, "window": window, "timestep": float(timestep)}
    return FeatureSet(maps, grid, tuple(float(s) for s in geometry.stride_px), (height, width), float(timestep), meta)


def load_feature_npz(path) -> FeatureSet:
    """Read a file written by ``difftrack probe features`` (no pickles: plain arrays and a JSON string)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        maps = {}
        for name in data.files:
            kind, _, block = name.rpartition("_")
            if kind in FEATURE_KINDS and block.isdigit():
                maps[(kind, int(block))] = data[name]
        return FeatureSet(maps, tuple(int(v) for v in data["grid"]), tuple(float(v) for v in data["stride_px"]),
                          tuple(int(v) for v in data["frame_size"]), float(data["timestep"]), meta)
