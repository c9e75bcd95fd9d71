"""CAG: frame-local attention against a dense masked reference, processor parity with the stock
processors of every joint-attention family, and the guidance combination."""

import pytest
import torch

from difftrack.backbones.attention import frame_local_attention
from difftrack.errors import UserError
from difftrack.guidance import (
    CrossFrameAttentionRemoval,
    CrossFramePerturbedProcessor,
    GuidanceConfig,
    GuidedPredictor,
    combine,
)
from difftrack.testing import tiny_backbone

KINDS = ["cogvideox-sincos", "cogvideox-rope", "hunyuanvideo", "embedded"]
PROMPT = "a red disc moves left over the floor"


def tiny_embedded_backbone():
    """The embedded model's architecture and adapter (pixel-space CogVideoX, RoPE, no VAE), random weights."""
    from difftrack.backbones.embedded import EmbeddedBackbone, build_components, model_config

    c = build_components(model_config(layers=2, heads=2, head_dim=16, size=16, frames=3, text_tokens=6))
    return EmbeddedBackbone("tiny-embedded", c["transformer"], c["scheduler"], None, c["text_encoder"],
                            c["tokenizer"], source="memory")


@pytest.fixture(scope="module")
def backbones():
    return {kind: tiny_embedded_backbone() if kind == "embedded" else tiny_backbone(kind) for kind in KINDS}


def dense_reference_mask(text_len, frames, per_frame, text_first, key_mask=None):
    """(B or 1, S, S) bool, True = may attend: the naive dense mask of the perturbed branch."""
    s = text_len + frames * per_frame
    frame_of = torch.arange(frames).repeat_interleave(per_frame)
    is_text = torch.ones(s, dtype=torch.bool)
    frame = torch.full((s,), -1)
    video = slice(text_len, s) if text_first else slice(0, s - text_len)
    is_text[video] = False
    frame[video] = frame_of
    allowed = is_text[:, None] | is_text[None, :] | (frame[:, None] == frame[None, :])
    allowed = allowed.unsqueeze(0)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :]
    return allowed, frame, is_text


@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_frame_local_attention_probabilities(text_first, padded):
    """With one-hot values the output rows ARE the attention probabilities the function implies."""
    b, h, text_len, frames, per_frame, d = 2, 3, 4, 3, 5, 8
    s = text_len + frames * per_frame
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(b, h, s, d, generator=g, dtype=torch.float64) for _ in range(2))
    key_mask = None
    if padded:
        key_mask = torch.ones(b, s, dtype=torch.bool)
        text_idx = torch.arange(text_len) + (0 if text_first else s - text_len)
        key_mask[1, text_idx[-2:]] = False  # the second sample's last two text tokens are padding
    eye = torch.eye(s, dtype=torch.float64).expand(b, h, s, s)
    probs = frame_local_attention(q, k, eye, text_len, text_first, per_frame, key_mask=key_mask)

    allowed, frame, is_text = dense_reference_mask(text_len, frames, per_frame, text_first, key_mask)
    logits = (q @ k.transpose(-1, -2)) / d ** 0.5
    reference = logits.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)

    torch.testing.assert_close(probs.sum(-1), torch.ones(b, h, s, dtype=torch.float64))
    other_frame_video = (~is_text[:, None]) & (~is_text[None, :]) & (frame[:, None] != frame[None, :])
    assert other_frame_video.any()
    assert probs[..., other_frame_video].abs().max().item() == 0.0
    torch.testing.assert_close(probs, reference)
    # Text rows attend everywhere (except padding) and differ from a frame-local row.
    text_rows = probs[:, :, is_text]
    assert (text_rows[0][..., ~is_text] > 0).all()
    if padded:
        assert probs[1][..., ~key_mask[1]].abs().max().item() == 0.0


def _recorded_calls(bb, latents, t, embeds, extra):
    """The arguments each layer's stock processor receives in one forward."""
    calls = {}

    class Recorder:
        def __init__(self, layer, stock):
            self.layer, self.stock = layer, stock

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):
            calls[self.layer] = (hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    saved = [attn.processor for attn in bb.layers]
    for i, attn in enumerate(bb.layers):
        attn.set_processor(Recorder(i, attn.processor))
    try:
        bb.predict(latents, t, embeds, **extra)
    finally:
        for attn, proc in zip(bb.layers, saved):
            attn.set_processor(proc)
    return calls


def _inputs(bb, batch, frames=2, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = getattr(bb, "native_size", (size,))[0]
    latents = torch.randn(batch, frames, bb.latent_channels, size, size, generator=g)
    prompts = ["", PROMPT, "the blue square moves up"][:batch]
    embeds, extra = bb.encode_conditioning(prompts)
    return latents, torch.tensor(500.0), embeds, extra


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_processor_matches_stock_and_dense_masked_reference(backbones, kind):
    """Rows before ``perturbed_from`` equal the stock processor; perturbed rows equal the stock processor run
    with the naive dense mask (every layer: dual- and single-stream blocks for HunyuanVideo)."""
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb, batch=3)
    removal = CrossFrameAttentionRemoval(bb, range(bb.num_layers))
    per_frame = removal.tokens_per_frame(latents)
    calls = _recorded_calls(bb, latents, t, embeds, extra)
    for layer, attn in enumerate(bb.layers):
        hidden, encoder, mask, rotary = calls[layer]
        stock = attn.processor(attn, hidden, encoder, mask, rotary)
        removal.state.perturbed_from, removal.state.tokens_per_frame = 1, per_frame
        proc = CrossFramePerturbedProcessor(attn.processor, removal.state, bb.perturbed_attention)
        out = proc(attn, hidden, encoder, mask, rotary)

        text_len = encoder.shape[1]
        key_mask = None if mask is None else mask.reshape(mask.shape[0], -1).bool()
        dense, _, _ = dense_reference_mask(text_len, latents.shape[1], per_frame, bb.text_position == "first",
                                           key_mask)
        dense = dense.expand(hidden.shape[0], -1, -1)
        if kind == "hunyuanvideo":
            reference = attn.processor(attn, hidden, encoder, dense[:, None], rotary)
        else:
            reference = attn.processor(attn, hidden, encoder, dense, rotary)
        for part in range(2):  # (video output, text output)
            torch.testing.assert_close(out[part][:1], stock[part][:1], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[part][1:], reference[part][1:], rtol=1e-5, atol=1e-5)
        # Text rows attend everywhere, so only the video output of the perturbed row moves.
        assert (out[0][1:] - stock[0][1:]).abs().max() > 1e-4, "the perturbation changed nothing"


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_installed_processors_leave_the_model_unchanged_when_idle(backbones, kind):
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb, batch=2)
    stock = bb.predict(latents, t, embeds, **extra)
    with CrossFrameAttentionRemoval(bb, [0]) as removal:
        idle = bb.predict(latents, t, embeds, **extra)
        removal.state.perturbed_from, removal.state.tokens_per_frame = 1, removal.tokens_per_frame(latents)
        perturbed = bb.predict(latents, t, embeds, **extra)
    assert torch.equal(stock, idle)
    torch.testing.assert_close(perturbed[:1], stock[:1], rtol=1e-5, atol=1e-5)
    assert (perturbed[1:] - stock[1:]).abs().max() > 1e-4
    assert all(type(a.processor).__name__ != "CrossFramePerturbedProcessor" for a in bb.layers)


def _guided(bb, config, seed=3):
    g = torch.Generator().manual_seed(seed)
    size = getattr(bb, "native_size", (8,))[0]
    latents = torch.randn(1, 2, bb.latent_channels, size, size, generator=g)
    embeds, extra = bb.encode_conditioning(["", PROMPT])
    uncond = (embeds[:1], {k: v[:1] for k, v in extra.items()})
    cond = (embeds[1:], {k: v[1:] for k, v in extra.items()})
    with GuidedPredictor(bb, config, cond, uncond) as predictor:
        return predictor(latents, torch.tensor(700.0), step_index=0)


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_branches_equal_batched(backbones, kind):
    bb = backbones[kind]
    layers = tuple(range(bb.num_layers))
    batched = _guided(bb, GuidanceConfig("cag", 6.0, 1.5, layers))
    sequential = _guided(bb, GuidanceConfig("cag", 6.0, 1.5, layers, sequential_branches=True))
    torch.testing.assert_close(batched, sequential, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["cogvideox-rope", "hunyuanvideo"])
def test_cag_term_and_step_range(backbones, kind):
    bb = backbones[kind]
    layers = tuple(range(bb.num_layers))
    cfg = _guided(bb, GuidanceConfig("cfg", 6.0))
    assert torch.equal(_guided(bb, GuidanceConfig("cag", 6.0, 0.0, layers)), cfg)
    assert torch.equal(_guided(bb, GuidanceConfig("cag", 6.0, 2.0, layers, cag_steps=(1, 5))), cfg)
    cag = _guided(bb, GuidanceConfig("cag", 6.0, 2.0, layers, cag_steps=(0, 1)))
    assert (cag - cfg).abs().max() > 1e-3
    # The batched three-branch forward reproduces the CFG branches: the difference is exactly the CAG term.
    half = _guided(bb, GuidanceConfig("cag", 6.0, 1.0, layers))
    torch.testing.assert_close(cag - cfg, 2.0 * (half - cfg), rtol=1e-4, atol=1e-4)


def test_combine_formula_and_prediction_space():
    g = torch.Generator().manual_seed(0)
    u, c, p, x_t = (torch.randn(5, generator=g) for _ in range(4))
    w, s = 6.0, 1.5
    torch.testing.assert_close(combine(c, u, p, w, s), u + w * (c - u) + s * (c - p))
    torch.testing.assert_close(combine(c, u, None, w, s), u + w * (c - u))
    assert torch.equal(combine(c), c)
    # Rectified flow: eps = x_t + (1 - sigma) * flow is affine in the prediction, and the branch weights sum
    # to 1, so guiding the flow prediction is the same as guiding the implied noise prediction.
    sigma = 0.3
    to_eps = lambda pred: x_t + (1 - sigma) * pred  # noqa: E731
    torch.testing.assert_close(to_eps(combine(c, u, p, w, s)), combine(to_eps(c), to_eps(u), to_eps(p), w, s))


@pytest.mark.parametrize("kind", ["wan"])
def test_cag_refused_without_joint_attention(kind):
    bb = tiny_backbone(kind)
    with pytest.raises(UserError, match="separate cross-attention"):
        CrossFrameAttentionRemoval(bb, [0])


def test_bad_guidance_settings(backbones):
    bb = backbones["cogvideox-rope"]
    with pytest.raises(UserError, match="out of range"):
        CrossFrameAttentionRemoval(bb, [bb.num_layers])
    with pytest.raises(UserError, match=">= 0"):
        GuidanceConfig("cag", 6.0, -1.0, (0,))
    with pytest.raises(UserError, match="finite"):
        GuidanceConfig("cfg", float("nan"))
    with pytest.raises(UserError, match="not a range"):
        GuidanceConfig("cag", 6.0, 1.0, (0,), cag_steps=(3, 3))


def test_separately_encoded_branches_of_different_text_length(backbones):
    """HunyuanVideo trims text padding per encoding call: the shorter branch is padded back with masked
    tokens, which leaves the prediction as if both had been encoded together."""
    bb = backbones["hunyuanvideo"]
    uncond, cond = bb.encode_conditioning([""]), bb.encode_conditioning([PROMPT])
    assert uncond[0].shape[1] < cond[0].shape[1]
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 2, bb.latent_channels, 8, 8, generator=g)
    config = GuidanceConfig("cag", 6.0, 1.0, (0, 1))
    with GuidedPredictor(bb, config, cond, uncond) as predictor:
        separate = predictor(latents, torch.tensor(700.0), step_index=0)
    torch.testing.assert_close(separate, _guided(bb, config), rtol=1e-4, atol=1e-4)
