"""Tiny random-weight configs of the stock diffusers/transformers classes, built offline.

Used by the tests (every code path, no hub access) and by benchmarks that need a model with a real
model's token geometry but negligible width.
"""

from __future__ import annotations

import torch

from difftrack.text import tiny_t5, word_tokenizer


DEMO_WORDS = "a the red blue striped checkered disc square moves left right up down over wall floor".split()


def tiny_text_stack(text_dim: int = 32, max_length: int = 8, seed: int = 0):
    tokenizer = word_tokenizer(DEMO_WORDS, model_max_length=max_length)
    return tiny_t5(len(tokenizer), d_model=text_dim, seed=seed), tokenizer


def tiny_cogvideox_components(rope: bool = True, i2v: bool = False, layers: int = 2, heads: int = 2,
                              head_dim: int = 16, text_tokens: int = 8, sample: int = 8, seed: int = 0) -> dict:
    """Components of a CogVideoX(-I2V) pipeline: 8x spatial / 4x temporal VAE, ``layers`` blocks."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, latent_channels=4,
                                 down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4,
                                 block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=8 if i2v else 4, out_channels=4,
        time_embed_dim=16, text_embed_dim=32, num_layers=layers, sample_width=sample, sample_height=sample,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=text_tokens,
        use_rotary_positional_embeddings=rope)
    text_encoder, tokenizer = tiny_text_stack(32, text_tokens, seed)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler": scheduler}


def save_pipeline(components: dict, pipeline_cls, path) -> None:
    """Write components as a diffusers pipeline directory (model_index.json + subfolders)."""
    pipe = pipeline_cls(**components)
    pipe.save_pretrained(str(path), safe_serialization=True)


def tiny_llama_stack(hidden: int = 16, max_length: int = 512, seed: int = 0):
    """A 2-layer LlamaModel and a word-level tokenizer with a BOS token, padding on the right.

    Two layers because HunyuanVideo reads the third-to-last hidden state.
    """
    from transformers import LlamaConfig, LlamaModel

    tokenizer = word_tokenizer(DEMO_WORDS, max_length, specials=("<pad>", "<bos>", "<eos>", "<unk>"),
                               template="<bos> $A", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                               unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_length,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaModel(cfg).eval(), tokenizer


def tiny_clip_stack(hidden: int = 16, seed: int = 0):
    """A 1-layer CLIPTextModel (77 positions, as the pipelines pad to) and a word-level tokenizer.

    Padding uses the end-of-text token as CLIP's does, and its id is not 2, so the pooled output is
    read at the first end-of-text token (CLIP's non-legacy rule).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = word_tokenizer(DEMO_WORDS, 77, specials=("<|endoftext|>", "<|startoftext|>", "<unk>"),
                               template="<|startoftext|> $A <|endoftext|>", pad_token="<|endoftext|>",
                               bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                         pad_token_id=0, bos_token_id=1, eos_token_id=0)
    return CLIPTextModel(cfg).eval(), tokenizer


def tiny_umt5(vocab_size: int, d_model: int = 32, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
                     relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return UMT5EncoderModel(cfg).eval()


def tiny_hunyuan_video_components(layers: int = 1, single_layers: int = 1, heads: int = 2, head_dim: int = 16,
                                  seed: int = 0) -> dict:
    """Components of a HunyuanVideoPipeline: 8x spatial / 4x temporal VAE, dual- and single-stream blocks."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
                                    block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                                    temporal_compression_ratio=4, spatial_compression_ratio=8,
                                    mid_block_add_attention=True)
    text_encoder, tokenizer = tiny_llama_stack(16, seed=seed)
    text_encoder_2, tokenizer_2 = tiny_clip_stack(16, seed=seed)
    axis = 2 * (head_dim // 6)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
        num_single_layers=single_layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=16,
        rope_axes_dim=(head_dim - 2 * axis, axis, axis))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2,
            "scheduler": scheduler}


def tiny_wan_components(layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> dict:
    """Components of a WanPipeline: Wan VAE (8x spatial / 4x temporal, 4 latent channels), UMT5 text encoder."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    # Non-trivial statistics so that the latent normalisation is exercised.
    vae = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, -0.4], latents_std=[1.5, 0.5, 2.0, 1.0])
    tokenizer = word_tokenizer(DEMO_WORDS, model_max_length=512)
    text_encoder = tiny_umt5(len(tokenizer), d_model=32, seed=seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=16, ffn_dim=32, num_layers=layers, rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler": scheduler}


# kind -> (component builder keyword arguments, diffusers pipeline class name, adapter loader family)
TINY_KINDS = {
    "cogvideox-sincos": ("cogvideox", {"rope": False}, "CogVideoXPipeline"),
    "cogvideox-rope": ("cogvideox", {"rope": True}, "CogVideoXPipeline"),
    "cogvideox-i2v": ("cogvideox", {"rope": True, "i2v": True}, "CogVideoXImageToVideoPipeline"),
    "hunyuanvideo": ("hunyuanvideo", {}, "HunyuanVideoPipeline"),
    "wan": ("wan", {}, "WanPipeline"),
}


def tiny_components(kind: str, seed: int = 0) -> dict:
    family, kwargs, _ = TINY_KINDS[kind]
    builder = {"cogvideox": tiny_cogvideox_components, "hunyuanvideo": tiny_hunyuan_video_components,
               "wan": tiny_wan_components}[family]
    return builder(seed=seed, **kwargs)


def tiny_pipeline_class(kind: str):
    import diffusers

    return getattr(diffusers, TINY_KINDS[kind][2])


def tiny_backbone(kind: str, seed: int = 0):
    """A tiny random backbone of ``kind`` (see ``TINY_KINDS``), built in memory from its components."""
    from difftrack.backbones.cogvideox import CogVideoXBackbone, CogVideoXImageToVideoBackbone
    from difftrack.backbones.hunyuan import HunyuanVideoBackbone
    from difftrack.backbones.wan import WanBackbone

    c = tiny_components(kind, seed)
    common = (f"tiny-{kind}", c["transformer"], c["scheduler"], c["vae"], c["text_encoder"], c["tokenizer"])
    if kind == "hunyuanvideo":
        return HunyuanVideoBackbone(*common, source="memory", text_encoder_2=c["text_encoder_2"],
                                    tokenizer_2=c["tokenizer_2"])
    if kind == "wan":
        return WanBackbone(*common, source="memory")
    cls = CogVideoXImageToVideoBackbone if kind == "cogvideox-i2v" else CogVideoXBackbone
    return cls(*common, source="memory")
