"""Descriptor capture on the stock processors of every tiny backbone: parity, correctness, early exit, steps, rows."""

import pytest
import torch

from difftrack import DescriptorCapture, UserError
from difftrack.testing import TINY_KINDS, tiny_backbone

KINDS = list(TINY_KINDS)
PROMPTS = ["a red disc moves left over the floor"]


@pytest.fixture(scope="module")
def backbones():
    return {kind: tiny_backbone(kind) for kind in KINDS}


def _inputs(bb, batch=1, frames=2, size=8, seed=1):
    """Latents (B, F, C, size, size), text conditioning and a timestep for one forward."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, frames, bb.latent_channels, size, size, generator=g)
    embeds, extra = bb.encode_conditioning(PROMPTS * batch)
    return latents, torch.tensor(500.0), embeds, extra


@pytest.mark.parametrize("kind", KINDS)
def test_model_output_unchanged_with_capture(backbones, kind):
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb)
    with torch.no_grad():
        stock = bb.predict(latents, t, embeds, **extra)
        with DescriptorCapture(bb, range(bb.num_layers), features=True) as cap:
            captured = bb.predict(latents, t, embeds, **extra)
    assert len(cap.results) == bb.num_layers
    assert (stock - captured).abs().max().item() <= 1e-5
    # The stock processors are back in place afterwards.
    assert not any(type(attn.processor).__name__ == "_CaptureProcessor" for attn in bb.layers)


def _split_values(text_position, attn, values, text_len):
    """Split the value projections the test hooked into (video, text), each (B, H, N, D)."""
    def heads(v):
        return v.unflatten(2, (attn.heads, -1)).transpose(1, 2)

    v = values["to_v"]
    if text_position == "separate":  # self-attention over video only, text in cross-attention
        return heads(v), None
    if "add_v_proj" in values:  # dual stream: text has its own projections
        return heads(v), heads(values["add_v_proj"])
    if text_position == "first":  # [text, video]
        return heads(v[:, text_len:]), heads(v[:, :text_len])
    return heads(v[:, :-text_len]), heads(v[:, -text_len:])  # [video, text]


@pytest.mark.parametrize("kind", KINDS)
def test_descriptors_reproduce_the_attention_output(backbones, kind):
    """Attention recomputed from the captured q/k (and the values) equals the captured pre-to_out feature,
    so the descriptors are post-norm, post-RoPE and split into video and text correctly."""
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb)
    for layer, attn in enumerate(bb.layers):
        values = {}
        hooks = [getattr(attn, name).register_forward_hook(
                     lambda _m, _i, out, name=name: values.__setitem__(name, out.detach()))
                 for name in ("to_v", "add_v_proj") if getattr(attn, name, None) is not None]
        try:
            with torch.no_grad(), DescriptorCapture(bb, [layer], features=True) as cap:
                bb.predict(latents, t, embeds, **extra)
        finally:
            for h in hooks:
                h.remove()
        desc = cap.results[(layer, 0)]
        text_len = 0 if desc.text_key is None else desc.text_key.shape[2]
        if bb.text_position != "separate":
            assert text_len == embeds.shape[1]
        v_video, v_text = _split_values(bb.text_position, attn, values, text_len)
        keys = desc.key if desc.text_key is None else torch.cat([desc.key, desc.text_key], dim=2)
        vals = v_video if v_text is None else torch.cat([v_video, v_text], dim=2)
        scale = desc.query.shape[-1] ** -0.5
        probs = torch.softmax(desc.query @ keys.transpose(-1, -2) * scale, dim=-1)
        recomputed = (probs @ vals).transpose(1, 2).flatten(2)
        token_frames = -(-latents.shape[1] // bb.temporal_patch)
        n_video = token_frames * (latents.shape[3] // bb.patch_size) * (latents.shape[4] // bb.patch_size)
        assert desc.query.shape == desc.key.shape == (1, bb.heads, n_video, desc.query.shape[-1])
        assert desc.feature.shape == recomputed.shape
        assert (recomputed - desc.feature).abs().max().item() <= 1e-5, f"layer {layer}"


@pytest.mark.parametrize("kind", ["cogvideox-rope", "hunyuanvideo", "wan"])
def test_rope_changes_descriptors(backbones, kind):
    """Guard against a no-op RoPE: the same content at another frame gets different post-RoPE keys."""
    bb = backbones[kind]
    frame = torch.randn(1, 1, bb.latent_channels, 8, 8)
    latents = frame.repeat(1, 2, 1, 1, 1)
    embeds, extra = bb.encode_conditioning(PROMPTS)
    with torch.no_grad(), DescriptorCapture(bb, [0]) as cap:
        bb.predict(latents, torch.tensor(500.0), embeds, **extra)
    key = cap.results[(0, 0)].key
    per_frame = key.shape[2] // 2
    assert not torch.allclose(key[:, :, :per_frame], key[:, :, per_frame:], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_early_exit_skips_later_layers(backbones, kind):
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb)
    calls = []
    later = bb.layers[1:]
    hooks = [attn.register_forward_pre_hook(lambda *_: calls.append(1)) for attn in later]
    try:
        with torch.no_grad(), DescriptorCapture(bb, [0], early_exit=True) as cap:
            out = cap.run(bb.predict, latents, t, embeds, **extra)
    finally:
        for h in hooks:
            h.remove()
    assert out is None
    assert list(cap.results) == [(0, 0)]
    assert later and calls == []


@pytest.mark.parametrize("kind", ["cogvideox-sincos", "hunyuanvideo", "wan"])
def test_only_requested_steps_are_captured(backbones, kind):
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb)
    last = bb.num_layers - 1
    with torch.no_grad(), DescriptorCapture(bb, [0, last], steps=[1]) as cap:
        for step in range(3):
            cap.step = step
            bb.predict(latents, t, embeds, **extra)
    assert sorted(cap.results) == [(0, 1), (last, 1)]


@pytest.mark.parametrize("kind", ["cogvideox-i2v", "hunyuanvideo", "wan"])
def test_batch_rows_keep_only_requested_rows(backbones, kind):
    bb = backbones[kind]
    latents, t, embeds, extra = _inputs(bb, batch=2)
    with torch.no_grad():
        with DescriptorCapture(bb, [1], features=True) as full:
            bb.predict(latents, t, embeds, **extra)
        with DescriptorCapture(bb, [1], features=True, batch_rows=[1]) as cond:
            bb.predict(latents, t, embeds, **extra)
    a, b = full.results[(1, 0)], cond.results[(1, 0)]
    assert a.query.shape[0] == 2 and b.query.shape[0] == 1
    for name in ("query", "key", "text_key", "feature"):
        full_t, kept = getattr(a, name), getattr(b, name)
        if full_t is None:
            assert kept is None
            continue
        assert torch.equal(full_t[1:], kept)
        assert not torch.allclose(full_t[:1], kept)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_out_of_range_names_valid_range(backbones, kind):
    bb = backbones[kind]
    with pytest.raises(UserError) as err:
        DescriptorCapture(bb, [bb.num_layers])
    msg = str(err.value)
    assert "\n" not in msg and f"0..{bb.num_layers - 1}" in msg
