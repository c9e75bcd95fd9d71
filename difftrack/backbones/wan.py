"""Wan 2.1 adapter (diffusers ``WanTransformer3DModel``).

Wan keeps text out of its 3D self-attention: each block runs self-attention ``attn1`` over the
video tokens only, then a separate cross-attention ``attn2`` to the UMT5 text tokens. The layers
are the ``attn1`` modules; there is no text key in the joint sequence. Its q/k RMS norm acts on the
flattened (B, S, H * D) projections, before the heads are split, and RoPE is an inline interleaved
cos/sin formula inside ``WanAttnProcessor`` (rebuilt in :func:`wan_rotary`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from difftrack.backbones import Backbone, ProcessorCall, register_checkpoint, register_component_loader
from difftrack.backbones import register_tiny_config
from difftrack.backbones.cross_text import CrossAttentionTextMixin
from difftrack.backbones.flow import FlowMatchingMixin

if TYPE_CHECKING:
    import torch

HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on (B, S, H, D): channel pairs (2i, 2i + 1) rotate by the angle whose cos/sin the
    rotary module repeats at (2i, 2i + 1); the same formula as the stock WanAttnProcessor."""
    import torch

    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanBackbone(CrossAttentionTextMixin, FlowMatchingMixin, Backbone):
    family = "wan"
    stock_pipeline = "WanPipeline"
    vae_compression_keys = ("scale_factor_spatial", "scale_factor_temporal")
    pipeline_default_size = (81, 480, 832)  # WanPipeline's defaults
    trained_latent_frames = 21  # the stock pipeline's 81 RGB frames
    display_name = "Wan"
    default_max_sequence_length = 512

    @property
    def layers(self):
        return [block.attn1 for block in self.transformer.blocks]

    @property
    def patch_size(self) -> int:
        p_t, p_h, p_w = self.transformer.config.patch_size
        if p_t != 1 or p_h != p_w:  # the token geometry maps one latent frame to one token frame, square tokens
            raise NotImplementedError(f"Wan patch size {(p_t, p_h, p_w)} is not supported; (1, p, p) is")
        return p_h

    # ----- video <-> latents -------------------------------------------------------------------
    def latent_statistics(self):
        cfg = self.vae.config
        return cfg.latents_mean, cfg.latents_std, 1.0  # the stock pipeline's (latents - mean) / std

    # ----- text --------------------------------------------------------------------------------
    def encode_prompt(self, prompts):
        import torch

        with torch.no_grad():
            embeds, _ = self.pipeline.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                    max_sequence_length=self.max_sequence_length,
                                                    device=self.device, dtype=self.dtype)
        return embeds

    # ----- forward -----------------------------------------------------------------------------
    def predict(self, latents, timestep, prompt_embeds, **extra):
        import torch

        b = latents.shape[0]
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(b)
        out = self.transformer(hidden_states=latents.permute(0, 2, 1, 3, 4), timestep=timestep,
                               encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4)

    # ----- capture -----------------------------------------------------------------------------
    def capture_targets(self, attn):
        return ["norm_q", "norm_k"]

    def split_descriptors(self, attn, call: ProcessorCall):
        q = call.hooked["norm_q"].unflatten(2, (attn.heads, -1))  # (B, S, H, D)
        k = call.hooked["norm_k"].unflatten(2, (attn.heads, -1))
        if call.rotary is not None:
            q = wan_rotary(q, *call.rotary)
            k = wan_rotary(k, *call.rotary)
        return q.transpose(1, 2), k.transpose(1, 2), None

    def video_feature(self, attn, call: ProcessorCall, output):
        return call.hooked["to_out_in"]


def wan_classes():
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    return dict(transformer=WanTransformer3DModel, vae=AutoencoderKLWan, text_encoder=UMT5EncoderModel,
                tokenizer=AutoTokenizer, scheduler=UniPCMultistepScheduler)


# The stock pipeline runs the Wan VAE in float32 whatever the transformer's dtype.
load_wan = register_component_loader("WanPipeline", WanBackbone, wan_classes, float32=("vae",))

register_checkpoint("wan2.1-t2v-1.3b", HUB_ID, load_wan, WanBackbone,
                    "Wan 2.1 text-to-video 1.3B, 3D RoPE self-attention, text via separate cross-attention", (30, 12))


# ----- tiny test configuration: the stock classes at tiny width, the checkpoints' geometry ----------
def tiny_components(layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> dict:
    """Components of a WanPipeline: Wan VAE (8x spatial / 4x temporal, 16 latent channels), UMT5 text encoder."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    # Non-trivial statistics so that the latent normalisation is exercised.
    vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=torch.linspace(-0.4, 0.4, 16).tolist(),
                           latents_std=torch.linspace(0.5, 2.0, 16).tolist())
    from difftrack.text import TINY_WORDS, tiny_umt5, word_tokenizer

    tokenizer = word_tokenizer(TINY_WORDS, model_max_length=512)
    text_encoder = tiny_umt5(len(tokenizer), d_model=32, seed=seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=16, ffn_dim=32, num_layers=layers, rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler": scheduler}


register_tiny_config("wan", tiny_components, "WanPipeline", WanBackbone, compression=(4, 8), patch_size=2)
