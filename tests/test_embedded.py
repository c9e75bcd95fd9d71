import numpy as np
import pytest
import torch

from difftrack.backbones import create_backbone, list_backbones
from difftrack.backbones.embedded import (
    EmbeddedBackbone,
    EmbeddedImageBackbone,
    build_components,
    model_config,
    save_components,
)
from difftrack.capture import DescriptorCapture


def _save(tmp_path, frames_per_sample, name):
    cfg = model_config(layers=2, heads=2, head_dim=16, size=16, frames=3, text_tokens=8, text_dim=16)
    path = tmp_path / name
    save_components(build_components(cfg, seed=1), path, frames_per_sample=frames_per_sample)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    return create_backbone(str(_save(root, 3, "video"))), create_backbone(str(_save(root, 1, "image")))


def _video(frames=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, frames, 3, size, size), generator=g) * 2 - 1


def test_registry_names_the_embedded_models_first():
    names = [e.name for e in list_backbones()]
    assert names[0] == "tiny-video" and "tiny-image" in names


def test_loads_as_the_right_adapter(models):
    video, image = models
    assert type(video) is EmbeddedBackbone and type(image) is EmbeddedImageBackbone
    assert video.native_size == (16, 16) and video.max_frames == 3 and video.num_layers == 2
    assert video.prediction_type() == "flow"


def test_pixels_are_the_latents_and_stride_follows_the_input(models):
    video, _ = models
    x = _video()
    assert torch.equal(video.decode_latents(video.encode_video(x)), x)
    big = torch.nn.functional.interpolate(x[0], size=(64, 64), mode="nearest")[None]
    lat = video.encode_video(big)
    assert lat.shape == (1, 3, 3, 16, 16)
    geo = video.geometry(lat, 8, frame_size=(64, 64))
    assert (geo.grid_h, geo.grid_w) == (4, 4) and geo.stride_px == (16.0, 16.0)
    assert video.geometry(lat, 8).stride_px == (4.0, 4.0)


def test_predict_is_the_stock_transformer_with_3d_rope(models):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    video, _ = models
    x, text = _video(), video.encode_prompt(["a striped disc moves left over a brick wall"])
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), 3)
    with torch.no_grad():
        ref = video.transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([500.0]),
                                image_rotary_emb=rope, return_dict=False)[0]
    torch.testing.assert_close(video.predict(x, torch.tensor(500.0), text), ref)


def test_video_model_mixes_frames_and_image_twin_does_not(models):
    video, image = models
    x = _video()
    y = x.clone()
    y[:, 2] = -y[:, 2]
    text = video.encode_prompt([""])
    with torch.no_grad():
        assert not torch.allclose(video.predict(x, 300.0, text)[:, 0], video.predict(y, 300.0, text)[:, 0])
        full = image.predict(x, 300.0, text)
        torch.testing.assert_close(full[:, 0], image.predict(y, 300.0, text)[:, 0])
        for f in range(3):  # each frame denoised alone
            torch.testing.assert_close(full[:, f:f + 1], image.predict(x[:, f:f + 1], 300.0, text))


def test_image_twin_descriptors_are_per_frame_forwards_in_frame_major_order(models):
    _, image = models
    x, text = _video(), image.encode_prompt([""])
    with torch.no_grad(), DescriptorCapture(image, [1], features=True) as cap:
        image.predict(x, 200.0, text)
    whole = cap.results[(1, 0)]
    assert whole.query.shape == (1, 2, 3 * 16, 16) and whole.feature.shape == (1, 3 * 16, 32)
    for f in range(3):
        with torch.no_grad(), DescriptorCapture(image, [1], features=True) as cap:
            image.predict(x[:, f:f + 1], 200.0, text)
        one = cap.results[(1, 0)]
        torch.testing.assert_close(whole.query[:, :, f * 16:(f + 1) * 16], one.query)
        torch.testing.assert_close(whole.key[:, :, f * 16:(f + 1) * 16], one.key)
        torch.testing.assert_close(whole.feature[:, f * 16:(f + 1) * 16], one.feature)
        if f == 0:  # text keys differ per frame after layer 0; the twin reports frame 0's
            torch.testing.assert_close(whole.text_key, one.text_key)


def test_sample_is_seeded_calls_on_step_and_guidance_matters(models):
    from difftrack.sampling import sample

    video, image = models
    seen = []
    a = sample(video, "a striped disc moves left over a brick wall", 3, 16, 16, num_steps=3, seed=4,
               on_step=lambda i, t: seen.append((i, float(t))), output="uint8", progress=False)
    b = sample(video, "a striped disc moves left over a brick wall", 3, 16, 16, num_steps=3, seed=4,
               output="uint8", progress=False)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert [i for i, _ in seen] == [0, 1, 2] and seen[0][1] > seen[1][1] > seen[2][1]
    plain = sample(video, "a striped disc moves left over a brick wall", 3, 16, 16, num_steps=3, seed=4,
                   guidance_scale=1.0, output="tensor", progress=False)
    assert plain.shape == (1, 3, 3, 16, 16) and not np.array_equal(a, (plain[0].permute(0, 2, 3, 1).add(1)
                                                                       .mul(127.5).round().byte().numpy()))
    two = sample(image, ["a red disc", "a blue square"], 3, 16, 16, num_steps=2, seed=0, output="uint8",
                 progress=False)
    assert two.shape == (2, 3, 16, 16, 3)


def test_sample_rejects_sizes_off_the_patch_grid(models):
    from difftrack.errors import UserError
    from difftrack.sampling import sample

    with pytest.raises(UserError, match="multiples of 4"):
        sample(models[0], "a disc", 3, 18, 16, num_steps=1)


def test_the_shipped_video_model_gets_its_measured_defaults():
    video = create_backbone("tiny-video")
    assert (video.track_layers(), video.default_track_step, video.default_cag_layers()) == ([5], (44, 50), [4, 5])
