"""LTX-Video adapter (diffusers ``LTXVideoTransformer3DModel``).

Like Wan, LTX-Video keeps text out of its 3D self-attention: each block runs self-attention ``attn1``
over the video tokens, then cross-attention ``attn2`` to the T5 text tokens, so the layers are the
``attn1`` modules and there is no text key in the joint sequence. The transformer takes the latents
packed as a sequence (B, F * H * W, C) (its patch sizes are 1), frame-major, and builds its RoPE from
the latent size and an interpolation scale (VAE compression over the frame rate); the q/k RMS norm
acts on the flattened projections, before RoPE and the head split (``LTXVideoAttnProcessor``). The
VAE compresses 32x in space and 8x in time; its latents are normalised per channel with the VAE's
``latents_mean`` / ``latents_std``. The scheduler shifts its sigmas with the sequence length (``mu``).
"""

from __future__ import annotations

import numpy as np

from difftrack.backbones import Backbone, ProcessorCall, register_checkpoint, register_component_loader
from difftrack.backbones import register_tiny_config
from difftrack.backbones.cross_text import CrossAttentionTextMixin
from difftrack.backbones.flow import FlowMatchingMixin

HUB_ID = "Lightricks/LTX-Video"
FRAME_RATE = 25  # the stock pipeline's default, part of its RoPE interpolation scale


class LTXVideoBackbone(CrossAttentionTextMixin, FlowMatchingMixin, Backbone):
    family = "ltx-video"
    pipeline_default_size = (161, 512, 704)  # LTXPipeline's defaults
    trained_latent_frames = 21  # the stock pipeline's 161 RGB frames
    display_name = "LTX-Video"
    stock_pipeline = "LTXPipeline"
    default_max_sequence_length = 128  # LTXPipeline's

    @property
    def layers(self):
        return [block.attn1 for block in self.transformer.transformer_blocks]

    @property
    def spatial_compression(self) -> int:
        return self.vae.spatial_compression_ratio

    @property
    def temporal_compression(self) -> int:
        return self.vae.temporal_compression_ratio

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        """The stock pipeline's schedule: sigmas linear from 1 to 1/num_steps, shifted by ``mu`` of the default
        video's token count (the schedule is one for every size here, so that steps mean the same everywhere)."""
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        frames, height, width = self.pipeline_default_size
        tokens = ((frames - 1) // self.temporal_compression + 1) * (height // self.spatial_compression) * (
            width // self.spatial_compression)
        cfg = scheduler.config
        kwargs = {}
        if cfg.get("use_dynamic_shifting"):
            kwargs["mu"] = calculate_shift(tokens, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device=device, **kwargs)

    # ----- video <-> latents -------------------------------------------------------------------
    def latent_statistics(self):
        return self.vae.latents_mean, self.vae.latents_std, self.vae.config.scaling_factor

    def decode_latents(self, latents):
        import torch

        lat = self.denormalize_latents(latents.to(self.vae.dtype)).permute(0, 2, 1, 3, 4)
        timestep = None
        if self.vae.config.timestep_conditioning:  # the stock pipeline's default decode_timestep 0
            timestep = torch.zeros(lat.shape[0], device=lat.device, dtype=lat.dtype)
        with torch.no_grad():
            return self.vae.decode(lat, timestep, return_dict=False)[0].permute(0, 2, 1, 3, 4).clamp(-1, 1)

    # ----- text --------------------------------------------------------------------------------
    def encode_conditioning(self, prompts):
        import torch

        with torch.no_grad():
            embeds, mask, _, _ = self.pipeline.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                             max_sequence_length=self.max_sequence_length,
                                                             device=self.device, dtype=self.dtype)
        return embeds, {"prompt_attention_mask": mask}

    def encode_prompt(self, prompts):
        return self.encode_conditioning(prompts)[0]

    # ----- forward -----------------------------------------------------------------------------
    def predict(self, latents, timestep, prompt_embeds, prompt_attention_mask=None, **extra):
        import torch

        b, f, c, h, w = latents.shape
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(b)
        sc, tc = self.spatial_compression, self.temporal_compression
        out = self.transformer(hidden_states=latents.permute(0, 1, 3, 4, 2).reshape(b, f * h * w, c),
                               encoder_hidden_states=prompt_embeds, timestep=timestep,
                               encoder_attention_mask=prompt_attention_mask, num_frames=f, height=h, width=w,
                               rope_interpolation_scale=(tc / FRAME_RATE, sc, sc), return_dict=False)[0]
        return out.reshape(b, f, h, w, c).permute(0, 1, 4, 2, 3)

    # ----- capture -----------------------------------------------------------------------------
    def capture_targets(self, attn):
        return ["norm_q", "norm_k"]

    def split_descriptors(self, attn, call: ProcessorCall):
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        q, k = call.hooked["norm_q"], call.hooked["norm_k"]  # (B, S, H * D)
        if call.rotary is not None:
            q, k = apply_rotary_emb(q, call.rotary), apply_rotary_emb(k, call.rotary)
        return (q.unflatten(2, (attn.heads, -1)).transpose(1, 2), k.unflatten(2, (attn.heads, -1)).transpose(1, 2),
                None)

    def video_feature(self, attn, call: ProcessorCall, output):
        return call.hooked["to_out_in"]


def _classes():
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    return dict(transformer=LTXVideoTransformer3DModel, vae=AutoencoderKLLTXVideo, text_encoder=T5EncoderModel,
                tokenizer=AutoTokenizer, scheduler=FlowMatchEulerDiscreteScheduler)


load_ltx_video = register_component_loader("LTXPipeline", LTXVideoBackbone, _classes)

register_checkpoint("ltx-video", HUB_ID, load_ltx_video, LTXVideoBackbone,
                    "LTX-Video 2B text-to-video, 32x32x8 VAE, 3D RoPE self-attention, text via separate cross-attention", (28, 32))


# ----- tiny test configuration: the stock classes at tiny width, the checkpoints' geometry ----------
def tiny_components(layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> dict:
    """Components of an LTXPipeline: LTX VAE (32x spatial / 8x temporal, 128 latent channels), T5 text encoder,
    shifted flow schedule."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    from difftrack.text import tiny_text_stack

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=4, patch_size_t=1,
                                spatio_temporal_scaling=(True, True, True, False),
                                decoder_spatio_temporal_scaling=(True, True, True, False))
    transformer = LTXVideoTransformer3DModel(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1,
                                             num_attention_heads=heads, attention_head_dim=head_dim,
                                             cross_attention_dim=heads * head_dim, num_layers=layers, caption_channels=32)
    text_encoder, tokenizer = tiny_text_stack(32, 128, seed)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler": scheduler}


register_tiny_config("ltx-video", tiny_components, "LTXPipeline", LTXVideoBackbone, compression=(8, 32), patch_size=1)
