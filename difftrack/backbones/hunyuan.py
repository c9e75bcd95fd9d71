"""HunyuanVideo adapter (diffusers ``HunyuanVideoTransformer3DModel``).

Text comes LAST in HunyuanVideo's joint sequence. The model has dual-stream blocks (video and text
have their own projections and q/k norms: ``to_q``/``norm_q`` for video, ``add_q_proj``/
``norm_added_q`` for text) followed by single-stream blocks (one set of projections over the
concatenated [video, text] sequence). Both kinds count as layers, in forward order. The stock
processor applies per-head RMS q/k norm, then RoPE to the video tokens only (``sequence_dim=1``).
"""

from __future__ import annotations

from difftrack.backbones import Backbone, ProcessorCall, register_checkpoint, register_component_loader
from difftrack.backbones import register_tiny_config
from difftrack.backbones.attention import frame_local_attention
from difftrack.backbones.flow import FlowMatchingMixin
from difftrack.backbones.offload import Component

HUB_ID = "hunyuanvideo-community/HunyuanVideo"


class HunyuanVideoBackbone(FlowMatchingMixin, Backbone):
    family = "hunyuanvideo"
    text_encoder_2 = Component()
    vae_compression_keys = ("spatial_compression_ratio", "temporal_compression_ratio")
    pipeline_default_size = (129, 720, 1280)  # HunyuanVideoPipeline's defaults
    trained_latent_frames = 33  # the stock pipeline's 129 RGB frames
    text_position = "last"
    stock_pipeline = "HunyuanVideoPipeline"
    # docs/method.md section 4: block 16 (dual-stream) at step 29 of 30; 20 dual + 40 single blocks, 24 heads.
    # The release tracks HunyuanVideo as it tracks CogVideoX: 480x720 frames, 13 frames per forward.
    method_defaults = {(60, 24): {"track_layers": (16,), "track_step": (29, 30), "paper_size": (480, 720),
                                  "paper_chunk": 13}}

    @classmethod
    def architecture(cls, config) -> tuple[int, int]:
        return config["num_layers"] + config["num_single_layers"], config["num_attention_heads"]

    def __init__(self, name, transformer, scheduler, vae=None, text_encoder=None, tokenizer=None, source="",
                 text_encoder_2=None, tokenizer_2=None, max_sequence_length: int = 256, guidance_scale: float = 6.0):
        super().__init__(name, transformer, scheduler, vae, text_encoder, tokenizer, source)
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        self.max_sequence_length = max_sequence_length
        self.guidance_scale = guidance_scale

    @property
    def layers(self):
        return ([block.attn for block in self.transformer.transformer_blocks]
                + [block.attn for block in self.transformer.single_transformer_blocks])

    @property
    def num_dual_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        """The stock pipeline's schedule: sigmas linear from 1 to 1/num_steps, then the scheduler's shift."""
        import numpy as np

        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1], device=device)

    # ----- text --------------------------------------------------------------------------------
    def encode_conditioning(self, prompts):
        """Llama hidden states (text tokens), CLIP pooled projection and the text mask, as the stock pipeline makes them.

        The padding after the batch's longest prompt is dropped: HunyuanVideo masks padded text keys
        out of every attention, so the prediction is unchanged, and the text tokens the capture hands
        out (text_key, geometry) are then the real ones for a single prompt.
        """
        import torch

        with torch.no_grad():
            embeds, pooled, mask = self.pipeline.encode_prompt(list(prompts), device=self.device, dtype=self.dtype,
                                                               max_sequence_length=self.max_sequence_length)
        keep = max(int(mask.sum(dim=1).max()), 1)
        if mask[:, keep:].any():  # not right-padded: nothing can be dropped safely
            keep = mask.shape[1]
        return embeds[:, :keep], {"pooled_projections": pooled, "prompt_attention_mask": mask[:, :keep]}

    def encode_prompt(self, prompts):
        return self.encode_conditioning(prompts)[0]

    # ----- forward -----------------------------------------------------------------------------
    def predict(self, latents, timestep, prompt_embeds, pooled_projections=None, prompt_attention_mask=None,
                guidance_scale=None, **extra):
        import torch

        if pooled_projections is None:
            raise ValueError("HunyuanVideo needs the CLIP pooled projection: get it with "
                             "backbone.encode_conditioning(prompts) and pass its extras to predict")
        b = latents.shape[0]
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=latents.device)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        guidance = torch.full((b,), scale * 1000.0, dtype=latents.dtype, device=latents.device)
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(b).to(latents.dtype)
        out = self.transformer(hidden_states=latents.permute(0, 2, 1, 3, 4), timestep=timestep,
                               encoder_hidden_states=prompt_embeds, encoder_attention_mask=prompt_attention_mask,
                               pooled_projections=pooled_projections, guidance=guidance, return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4)

    # ----- capture -----------------------------------------------------------------------------
    @staticmethod
    def _dual_stream(attn) -> bool:
        return attn.add_q_proj is not None

    def capture_targets(self, attn):
        if self._dual_stream(attn):
            return ["norm_q", "norm_k", "norm_added_k"]
        return ["norm_q", "norm_k"]

    def split_descriptors(self, attn, call: ProcessorCall):
        from diffusers.models.embeddings import apply_rotary_emb

        q, k = call.hooked["norm_q"], call.hooked["norm_k"]  # (B, S, H, D)
        if self._dual_stream(attn):
            qv, kv, kt = q, k, call.hooked["norm_added_k"]
        else:
            text_len = call.encoder_hidden_states.shape[1]
            qv, kv, kt = q[:, :-text_len], k[:, :-text_len], k[:, -text_len:]
        if call.rotary is not None:
            qv = apply_rotary_emb(qv, call.rotary, sequence_dim=1)
            kv = apply_rotary_emb(kv, call.rotary, sequence_dim=1)
        return qv.transpose(1, 2), kv.transpose(1, 2), kt.transpose(1, 2)

    def video_feature(self, attn, call: ProcessorCall, output):
        if self._dual_stream(attn):
            return call.hooked["to_out_in"]
        # Single-stream attention has no to_out (the block projects attention and MLP together); the
        # processor returns the attention output split into video and text.
        return output[0]

    # ----- CAG ---------------------------------------------------------------------------------
    def perturbed_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                            tokens_per_frame):
        """HunyuanVideoAttnProcessor2_0 with frame-local attention: [video, text], dual- or single-stream."""
        import torch
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.shape[1]
        dual = attn.add_q_proj is not None
        x = hidden_states if dual else torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            rope = lambda t: apply_rotary_emb(t, image_rotary_emb, sequence_dim=1)  # noqa: E731
            if dual:
                query, key = rope(query), rope(key)
            else:
                query = torch.cat([rope(query[:, :-text_len]), query[:, -text_len:]], dim=1)
                key = torch.cat([rope(key[:, :-text_len]), key[:, -text_len:]], dim=1)
        if dual:
            enc = [proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                   for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
            if attn.norm_added_q is not None:
                enc[0] = attn.norm_added_q(enc[0])
            if attn.norm_added_k is not None:
                enc[1] = attn.norm_added_k(enc[1])
            query, key, value = (torch.cat([a, e], dim=1) for a, e in zip((query, key, value), enc))
        key_mask = None
        if attention_mask is not None:  # the transformer's key-padding mask (B, 1, 1, S)
            key_mask = attention_mask.reshape(attention_mask.shape[0], -1)
        out = frame_local_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), text_len, False,
                                    tokens_per_frame, key_mask=key_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        video_out, encoder_out = out[:, :-text_len], out[:, -text_len:]
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_out = attn.to_add_out(encoder_out)
        return video_out, encoder_out


def _classes():
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import AutoTokenizer, CLIPTextModel, LlamaModel

    return dict(transformer=HunyuanVideoTransformer3DModel, vae=AutoencoderKLHunyuanVideo, text_encoder=LlamaModel,
                tokenizer=AutoTokenizer, text_encoder_2=CLIPTextModel, tokenizer_2=AutoTokenizer,
                scheduler=FlowMatchEulerDiscreteScheduler)


load_hunyuan_video = register_component_loader("HunyuanVideoPipeline", HunyuanVideoBackbone, _classes)

register_checkpoint("hunyuanvideo", HUB_ID, load_hunyuan_video, HunyuanVideoBackbone,
                    "HunyuanVideo text-to-video, 20 dual- + 40 single-stream blocks, text last, 3D RoPE", (60, 24))


# ----- tiny test configuration: the stock classes at tiny width, the checkpoints' geometry ----------
def tiny_components(layers: int = 1, single_layers: int = 1, heads: int = 2, head_dim: int = 16,
                    seed: int = 0) -> dict:
    """Components of a HunyuanVideoPipeline: 8x spatial / 4x temporal VAE, 16 latent channels, dual- and
    single-stream blocks."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=16,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
                                    block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                                    temporal_compression_ratio=4, spatial_compression_ratio=8,
                                    mid_block_add_attention=True)
    from difftrack.text import tiny_clip_stack, tiny_llama_stack

    text_encoder, tokenizer = tiny_llama_stack(16, seed=seed)
    text_encoder_2, tokenizer_2 = tiny_clip_stack(16, seed=seed)
    axis = 2 * (head_dim // 6)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
        num_single_layers=single_layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=16,
        rope_axes_dim=(head_dim - 2 * axis, axis, axis))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2,
            "scheduler": scheduler}


register_tiny_config("hunyuanvideo", tiny_components, "HunyuanVideoPipeline", HunyuanVideoBackbone, compression=(4, 8),
                     patch_size=2)
