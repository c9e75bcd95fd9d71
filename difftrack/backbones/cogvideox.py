"""CogVideoX adapters: text-to-video (2B sin-cos, 5B 3D RoPE, 1.5) and image-to-video.

Text comes FIRST in CogVideoX's joint sequence; the stock processor concatenates
[text, video], applies q/k LayerNorm per head and then RoPE to video tokens only.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from difftrack.backbones import Backbone, ProcessorCall, register_checkpoint, register_component_loader
from difftrack.backbones import register_tiny_config
from difftrack.backbones.attention import frame_local_attention
from difftrack.errors import UserError


class CogVideoXBackbone(Backbone):
    family = "cogvideox"
    # docs/method.md sections 4 and 5: tracking block 17 at the last of 50 steps; CAG blocks of the authors' runs.
    method_defaults = {(30, 30): {"track_layers": (17,), "track_step": (49, 50), "cag_layers": (13, 17, 21)},  # 2B
                       (42, 48): {"track_layers": (17,), "track_step": (49, 50), "cag_layers": (15, 17, 18)}}  # 5B
    text_position = "first"

    @property
    def layers(self):
        return [block.attn1 for block in self.transformer.transformer_blocks]

    @property
    def temporal_compression(self) -> int:
        return self.transformer.config.temporal_compression_ratio

    @property
    def text_tokens(self) -> int:
        return self.transformer.config.max_text_seq_length

    @property
    def temporal_patch(self) -> int:
        return self.transformer.config.patch_size_t or 1  # CogVideoX 1.5: 2

    @property
    def max_frames(self) -> int:
        """Latent frames of the trained videos: 13 for CogVideoX 1.0 (49 frames), 21 for 1.5 (81 frames)."""
        frames = self.transformer.config.get("sample_frames")
        return (frames - 1) // self.temporal_compression + 1 if frames else self.trained_latent_frames

    # ----- learned positions (CogVideoX-5B-I2V) -------------------------------------------------
    @property
    def learned_positions(self) -> bool:
        """Whether the transformer adds learned position embeddings, which exist for its trained size only."""
        return bool(self.transformer.config.get("use_learned_positional_embeddings"))

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        if self.learned_positions:  # any video is resized to the one size the positions were learned for
            cfg = self.transformer.config
            return cfg.sample_height * self.spatial_compression, cfg.sample_width * self.spatial_compression
        return super().working_size(height, width)

    def generation_size(self, frames=None, height=None, width=None):
        size = super().generation_size(frames, height, width)
        if self.learned_positions and size != super().generation_size():
            trained = super().generation_size()
            raise UserError(f"{self.name} has learned positions for {trained[0]} frames at {trained[1]}x{trained[2]} "
                            f"only; drop --frames/--height/--width (asked for {size[0]} at {size[1]}x{size[2]})")
        return size

    def check_positions(self, latents) -> None:
        """Refuse latents of another size than the learned positions': diffusers would fail on another
        resolution and silently swap in sin-cos positions for another frame count."""
        cfg = self.transformer.config
        frames = (cfg.sample_frames - 1) // self.temporal_compression + 1
        if self.learned_positions and tuple(latents.shape[1:2] + latents.shape[3:]) != (
                frames, cfg.sample_height, cfg.sample_width):
            raise UserError(f"{self.name} has learned positions for {frames} latent frames of "
                            f"{cfg.sample_height}x{cfg.sample_width} only, got {latents.shape[1]} of "
                            f"{latents.shape[3]}x{latents.shape[4]}: give videos of at least {frames} frames "
                            f"(tracking windows of {frames}) and keep the trained size")

    # ----- video <-> latents -------------------------------------------------------------------
    def decode_latents(self, latents):
        frames = latents.shape[1]
        if frames > 1 and frames % 2 == 0 and self.temporal_compression > 1:
            # The stock VAE decodes latent frames in pairs after the first: an even count comes back too long.
            raise UserError(f"CogVideoX's VAE decodes an odd number of latent frames (1 + 8k RGB frames), got {frames}; "
                            f"use {frames - 1} or {frames + 1} latent frames")
        return super().decode_latents(latents)

    # ----- text --------------------------------------------------------------------------------
    def encode_prompt(self, prompts):
        import torch

        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.text_tokens, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.text_encoder.device))[0].to(self.dtype)

    # ----- forward -----------------------------------------------------------------------------
    def rotary_embedding(self, latents):
        cfg = self.transformer.config
        if not cfg.use_rotary_positional_embeddings:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        frames, h, w = latents.shape[1], latents.shape[3], latents.shape[4]
        p, p_t = cfg.patch_size, cfg.patch_size_t
        grid = (h // p, w // p)
        base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
        if p_t is None:
            crops = get_resize_crop_region_for_grid(grid, base_w, base_h)
            cos, sin = get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, grid, frames, device=latents.device)
        else:
            cos, sin = get_3d_rotary_pos_embed(cfg.attention_head_dim, None, grid, (frames + p_t - 1) // p_t,
                                               grid_type="slice", max_size=(base_h, base_w), device=latents.device)
        return cos.to(latents.dtype), sin.to(latents.dtype)

    def transformer_inputs(self, latents, **extra):
        """The extra channels/arguments a family needs besides latents, timestep and text (none for T2V)."""
        return latents, {}

    def predict(self, latents, timestep, prompt_embeds, **extra):
        import torch

        self.check_positions(latents)
        hidden, kwargs = self.transformer_inputs(latents, **extra)
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(latents.shape[0])
        return self.transformer(hidden_states=hidden, encoder_hidden_states=prompt_embeds, timestep=timestep,
                                image_rotary_emb=self.rotary_embedding(latents), return_dict=False, **kwargs)[0]

    # ----- capture -----------------------------------------------------------------------------
    def capture_targets(self, attn):
        return ["norm_q" if attn.norm_q is not None else "to_q", "norm_k" if attn.norm_k is not None else "to_k"]

    def split_descriptors(self, attn, call: ProcessorCall):
        text_len = call.encoder_hidden_states.shape[1]
        names = self.capture_targets(attn)
        q, k = call.hooked[names[0]], call.hooked[names[1]]
        if q.dim() == 3:  # to_q/to_k outputs: (B, S, H*D) -> (B, H, S, D)
            q = q.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            k = k.unflatten(2, (attn.heads, -1)).transpose(1, 2)
        qv, kv, kt = q[:, :, text_len:], k[:, :, text_len:], k[:, :, :text_len]
        if call.rotary is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            qv = apply_rotary_emb(qv, call.rotary)
            kv = apply_rotary_emb(kv, call.rotary)
        return qv, kv, kt

    def video_feature(self, attn, call: ProcessorCall, output):
        return call.hooked["to_out_in"][:, call.encoder_hidden_states.shape[1]:]

    # ----- CAG ---------------------------------------------------------------------------------
    def perturbed_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                            tokens_per_frame):
        """CogVideoXAttnProcessor2_0 with frame-local attention: [text, video], q/k norm per head, RoPE on video."""
        if attention_mask is not None:
            raise NotImplementedError("CogVideoX's transformer passes no attention mask; CAG does not combine with one")
        import torch

        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        b = x.shape[0]
        query, key, value = (proj(x).unflatten(2, (attn.heads, -1)).transpose(1, 2)
                             for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query = torch.cat([query[:, :, :text_len], apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)], 2)
            key = torch.cat([key[:, :, :text_len], apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)], 2)
        out = frame_local_attention(query, key, value, text_len, True, tokens_per_frame)
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3])
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        return video_out, encoder_out


class CogVideoXImageToVideoBackbone(CogVideoXBackbone):
    """Image-to-video: the first frame's latents, zero-padded in time, are concatenated on channels."""

    family = "cogvideox-i2v"
    takes_image = True

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels // 2

    def image_latents(self, latents, first_frame_latents):
        import torch

        pad = torch.zeros_like(latents[:, 1:])
        return torch.cat([first_frame_latents, pad], dim=1)

    def image_conditioning(self, image, latents):
        """The stock pipeline's conditioning: the image, resized to the video's size, encoded as a one-frame
        video, zero-padded in time."""
        import cv2

        height, width = latents.shape[3] * self.spatial_compression, latents.shape[4] * self.spatial_compression
        frame = cv2.resize(np.asarray(image), (width, height), interpolation=cv2.INTER_AREA)[None]
        first = self.encode_frames(frame)  # already at a size encode_frames keeps
        return {"image_latents": self.image_latents(latents, first.expand(latents.shape[0], -1, -1, -1, -1))}

    def transformer_inputs(self, latents, image_latents=None, **extra):
        import torch

        if image_latents is None:
            # Analysis and tracking of a real video: condition on the video's own first latent frame.
            image_latents = self.image_latents(latents, latents[:, :1])
        kwargs = {}
        if self.transformer.config.ofs_embed_dim is not None:
            kwargs["ofs"] = latents.new_full((latents.shape[0],), 2.0)
        return torch.cat([latents, image_latents], dim=2), kwargs


def _classes():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    return dict(transformer=CogVideoXTransformer3DModel, vae=AutoencoderKLCogVideoX, text_encoder=T5EncoderModel,
                tokenizer=AutoTokenizer, scheduler=CogVideoXDDIMScheduler)


load_cogvideox = register_component_loader("CogVideoXPipeline", CogVideoXBackbone, _classes)
load_cogvideox_i2v = register_component_loader("CogVideoXImageToVideoPipeline", CogVideoXImageToVideoBackbone, _classes)

register_checkpoint("cogvideox-2b", "THUDM/CogVideoX-2b", load_cogvideox, CogVideoXBackbone,
                    "CogVideoX-2B text-to-video, sin-cos positions", (30, 30))
register_checkpoint("cogvideox-5b", "THUDM/CogVideoX-5b", load_cogvideox, CogVideoXBackbone,
                    "CogVideoX-5B text-to-video, 3D RoPE", (42, 48))
register_checkpoint("cogvideox1.5-5b", "THUDM/CogVideoX1.5-5B", load_cogvideox, CogVideoXBackbone,
                    "CogVideoX 1.5 5B text-to-video, 3D RoPE, tokens of 2 latent frames", (42, 48))
register_checkpoint("cogvideox-5b-i2v", "THUDM/CogVideoX-5b-I2V", load_cogvideox_i2v, CogVideoXImageToVideoBackbone,
                    "CogVideoX-5B image-to-video, 3D RoPE", (42, 48))


# ----- tiny test configuration: the stock classes at tiny width, the checkpoints' geometry ----------
def tiny_components(rope: bool = True, i2v: bool = False, temporal_patch: int | None = None, layers: int = 2,
                    heads: int = 2, head_dim: int = 16, text_tokens: int = 8, sample: int = 8, seed: int = 0) -> dict:
    """Components of a CogVideoX(-I2V) pipeline: 8x spatial / 4x temporal VAE, 16 latent channels, ``layers`` blocks; with
    ``temporal_patch`` 2, CogVideoX 1.5's tokens of two latent frames (and its bias-free patch embedding)."""
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, latent_channels=16,
                                 down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4,
                                 block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=32 if i2v else 16, out_channels=16,
        time_embed_dim=16, text_embed_dim=32, num_layers=layers, sample_width=sample, sample_height=sample,
        sample_frames=9, patch_size=2, patch_size_t=temporal_patch, patch_bias=temporal_patch is None,
        temporal_compression_ratio=4, max_text_seq_length=text_tokens, use_rotary_positional_embeddings=rope)
    from difftrack.text import tiny_text_stack

    text_encoder, tokenizer = tiny_text_stack(32, text_tokens, seed)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler": scheduler}


# Every CogVideoX checkpoint's: a 4x temporal, 8x spatial VAE and 2x2 patches.
CHECKPOINT_GEOMETRY = {"compression": (4, 8), "patch_size": 2}
register_tiny_config("cogvideox-sincos", partial(tiny_components, rope=False), "CogVideoXPipeline", CogVideoXBackbone,
                     **CHECKPOINT_GEOMETRY)
register_tiny_config("cogvideox-rope", partial(tiny_components, rope=True), "CogVideoXPipeline", CogVideoXBackbone,
                     **CHECKPOINT_GEOMETRY)
register_tiny_config("cogvideox-1.5", partial(tiny_components, rope=True, temporal_patch=2), "CogVideoXPipeline",
                     CogVideoXBackbone, **CHECKPOINT_GEOMETRY)
register_tiny_config("cogvideox-i2v", partial(tiny_components, rope=True, i2v=True), "CogVideoXImageToVideoPipeline",
                     CogVideoXImageToVideoBackbone, **CHECKPOINT_GEOMETRY)
