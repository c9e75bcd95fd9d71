"""Tiny random-weight configs of the stock diffusers/transformers classes, built offline.

Used by the tests (every code path, no hub access) and by benchmarks that need a model with a real
model's token geometry but negligible width.
"""

from __future__ import annotations

import torch


def word_tokenizer(words: list[str], model_max_length: int = 16):
    """A word-level fast tokenizer built with the `tokenizers` library (T5-style special tokens)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


def tiny_t5(vocab_size: int, d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


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
