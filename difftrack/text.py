"""Word-level text stacks built offline: the embedded models' tokenizer and T5 text encoder.

The embedded models are trained on generator captions with a small closed vocabulary, so a word-level
tokenizer (the `tokenizers` library) and a one-layer T5 encoder are all their text side needs.
"""

from __future__ import annotations

import torch

T5_SPECIALS = ("<pad>", "</s>", "<unk>")


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
