"""Word-level text stacks built offline: the embedded models' tokenizer and T5 text encoder, and the
tiny random text encoders (T5, UMT5, Llama, CLIP) of the adapters' tiny test configurations.

The embedded models are trained on generator captions with a small closed vocabulary, so a word-level
tokenizer (the `tokenizers` library) and a one-layer T5 encoder are all their text side needs.
"""

from __future__ import annotations

import torch

T5_SPECIALS = ("<pad>", "</s>", "<unk>")
# The vocabulary of the tiny test configurations (real checkpoints bring their own tokenizers).
TINY_WORDS = "a the red blue striped checkered disc square moves left right up down over wall floor".split()


def word_tokenizer(words: list[str], model_max_length: int = 16, specials: tuple[str, ...] = T5_SPECIALS,
                   template: str = "$A </s>", padding_side: str = "right", **roles):
    """A word-level fast tokenizer: ``specials`` take ids 0, 1, ... in order, then the lower-cased ``words``;
    ``template`` is the single-sequence post-processing; ``roles`` name the pad / eos / bos / unk tokens
    (default T5's: <pad>, </s>, <unk>)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    roles = roles or {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    vocab = {token: i for i, token in enumerate(specials)}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=roles["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    in_template = [(token, vocab[token]) for token in specials if token in template.split()]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=in_template)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   padding_side=padding_side, **roles)


def tiny_t5(vocab_size: int, d_model: int = 32, seed: int = 0):
    """A one-layer T5 encoder of width ``d_model`` with random weights from ``seed``."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def tiny_text_stack(text_dim: int = 32, max_length: int = 8, seed: int = 0):
    """A one-layer T5 encoder and a word-level T5-style tokenizer of ``TINY_WORDS``."""
    tokenizer = word_tokenizer(TINY_WORDS, model_max_length=max_length)
    return tiny_t5(len(tokenizer), d_model=text_dim, seed=seed), tokenizer


def tiny_llama_stack(hidden: int = 16, max_length: int = 512, seed: int = 0):
    """A 2-layer LlamaModel and a word-level tokenizer with a BOS token, padding on the right.

    Two layers because HunyuanVideo reads the third-to-last hidden state.
    """
    from transformers import LlamaConfig, LlamaModel

    tokenizer = word_tokenizer(TINY_WORDS, max_length, specials=("<pad>", "<bos>", "<eos>", "<unk>"),
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

    tokenizer = word_tokenizer(TINY_WORDS, 77, specials=("<|endoftext|>", "<|startoftext|>", "<unk>"),
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
