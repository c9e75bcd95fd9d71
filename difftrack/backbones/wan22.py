"""Wan 2.2 adapter: the TI2V-5B checkpoint (diffusers ``WanTransformer3DModel`` in a ``WanPipeline``).

The transformer is Wan 2.1's (self-attention ``attn1`` over the video tokens, UMT5 text through a separate
cross-attention), so the capture, RoPE and latent normalisation are :class:`WanBackbone`'s. What differs
is the geometry: Wan 2.2's VAE folds 2x2 pixel patches into channels before its 8x encoder, 16x
spatial / 4x temporal compression in all, into 48 latent channels; the stock pipeline makes 121 frames
at 704x1280 (31 latent frames, 44x80 latent cells, 22x40 tokens a frame). Its pipeline sets
``expand_timesteps``: the timestep is given per token so that an image-conditioned first frame can sit
at t = 0; for text-to-video every token has the same timestep, which is what the scalar timestep here
gives (the checkpoint's image-to-video mode, a clean first latent frame at t = 0, is not wired: `generate
--image` refuses it). A Wan 2.2 pipeline directory is told apart from a Wan 2.1 one (same ``WanPipeline`` class) by its
model_index.json. The A14B checkpoints run two transformers (high- and low-noise experts, switched at
``boundary_ratio``); capturing attention from two sets of layers is not supported, and loading one
says so in one line.
"""

from __future__ import annotations

import json
import os

from difftrack.backbones import component_loader, register_checkpoint, register_pipeline_loader, register_tiny_config
from difftrack.backbones.wan import WanBackbone, wan_classes
from difftrack.errors import UserError

HUB_ID = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


class Wan22Backbone(WanBackbone):
    family = "wan2.2"
    pipeline_default_size = (121, 704, 1280)  # the stock TI2V-5B settings
    trained_latent_frames = 31  # 121 RGB frames
    display_name = "Wan 2.2"
    pipeline_settings = {"expand_timesteps": True}


def _pipeline_index(directory: str) -> dict:
    path = os.path.join(directory, "model_index.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _has_two_experts(index: dict) -> bool:
    expert = index.get("transformer_2")
    return isinstance(expert, list) and expert[0] is not None


def is_wan22(directory: str) -> bool:
    """A Wan 2.2 pipeline: per-token timesteps (TI2V) or a second, low-noise expert (A14B)."""
    index = _pipeline_index(directory)
    return bool(index.get("expand_timesteps")) or _has_two_experts(index)


_load_components = component_loader(Wan22Backbone, wan_classes, float32=("vae",))


@register_pipeline_loader("WanPipeline", adapter=Wan22Backbone, claims=is_wan22)
def load_wan22(where, **kwargs):
    if _has_two_experts(_pipeline_index(where)):
        raise UserError(f"{where} is a Wan 2.2 pipeline with two experts (transformer and transformer_2, the "
                        f"A14B checkpoints); difftrack captures one transformer's attention: use {HUB_ID}")
    return _load_components(where, **kwargs)


register_checkpoint("wan2.2-ti2v-5b", HUB_ID, load_wan22, Wan22Backbone,
                    "Wan 2.2 TI2V 5B as text-to-video, 16x16x4 VAE with 48 latent channels, text via cross-attention", (30, 24))


# ----- tiny test configuration: the stock classes at tiny width, the checkpoint's geometry ----------
def tiny_components(layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> dict:
    """Components of a Wan 2.2 TI2V WanPipeline: the Wan 2.2 VAE (2x2 patches into channels, 16x spatial /
    4x temporal, 48 latent channels), UMT5 text encoder, flow UniPC with the checkpoint's shift 5."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    from difftrack.text import TINY_WORDS, tiny_umt5, word_tokenizer

    torch.manual_seed(seed)
    channels = 48
    # Non-trivial statistics so that the latent normalisation is exercised.
    mean = torch.linspace(-0.3, 0.3, channels).tolist()
    std = torch.linspace(0.5, 2.0, channels).tolist()
    vae = AutoencoderKLWan(base_dim=8, z_dim=channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                           out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                           latents_mean=mean, latents_std=std)
    tokenizer = word_tokenizer(TINY_WORDS, model_max_length=512)
    text_encoder = tiny_umt5(len(tokenizer), d_model=32, seed=seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=channels, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=layers, rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler": scheduler}


register_tiny_config("wan2.2", tiny_components, "WanPipeline", Wan22Backbone, compression=(4, 16), patch_size=2,
                     pipeline_kwargs=Wan22Backbone.pipeline_settings)
