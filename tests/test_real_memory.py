"""difftrack.memory, which benchmarks/real_memory.py measures with: its peak accounting against hand-counted
allocations, and one stage of a real config under FakeTensorMode."""

import torch

from difftrack.memory import PeakLiveBytes, peak_bytes


def test_peak_live_bytes_counts_what_is_alive_at_once_and_not_the_weights():
    weight = torch.zeros(256, 256)  # 256 KiB, existing before: a view of it (w.T) must not count
    tracker = PeakLiveBytes([weight])
    with tracker.mode:
        x = torch.ones(64, 256)  # 64 KiB
        y = x @ weight.T  # 64 KiB more: 128 KiB alive
        del x
        z = y.relu()  # x is freed: still 128 KiB alive at most
        del y, z
    assert tracker.peak == 128 * 1024
    assert tracker.live == 0


def test_a_stage_at_real_size_runs_without_memory():
    """CogVideoX-2B's real VAE config encoding 49 frames at 480x720 under FakeTensorMode: seconds, nothing
    real allocated, and a peak of the tiled encode's size."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from diffusers import AutoencoderKLCogVideoX

    from difftrack.backbones.cogvideox import CogVideoXBackbone
    from difftrack.testing import tiny_components

    transformer = tiny_components("cogvideox-rope")["transformer"]
    with FakeTensorMode(allow_non_fake_inputs=True):
        vae = AutoencoderKLCogVideoX().eval()
        bb = CogVideoXBackbone("fake", transformer=transformer, scheduler=None, vae=vae)
        peak, weights = peak_bytes([vae], lambda: bb.encode_video(torch.zeros(1, 49, 3, 480, 720)))
    assert weights == sum(p.numel() * 4 for p in vae.parameters()) + sum(b.numel() * b.element_size()
                                                                         for b in vae.buffers())
    assert 0.5 * 2**30 < peak - weights < 8 * 2**30  # the tiled encode's activations, not the whole video at once
