"""Noising modes for real videos: add, clean, and inversion checked against an oracle model.

With a model that predicts the true noise (DDIM) or the true flow noise - x0 (rectified flow), the
deterministic inversion from clean latents must land exactly on the forward-noised latents.
"""

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler

from difftrack.backbones.base import Backbone
from difftrack.errors import UserError
from difftrack.noising import prepare_latents


class OracleBackbone(Backbone):
    """Predicts from known clean latents and noise, in the scheduler's own prediction space."""

    def __init__(self, scheduler, clean, noise, kind):
        super().__init__("oracle", torch.nn.Linear(1, 1), scheduler)
        self.clean, self.noise, self.kind, self.calls = clean, noise, kind, 0

    def prediction_type(self):
        return "flow" if self.kind == "flow" else self.scheduler.config.prediction_type

    def encode_prompt(self, prompts):
        return torch.zeros(len(prompts), 1, 1)

    def predict(self, latents, timestep, prompt_embeds, **extra):
        self.calls += 1
        if self.kind == "flow":
            return self.noise - self.clean
        if self.kind == "epsilon":
            return self.noise
        # Timestep 0 is the clean end of the trajectory (the sampler's final_alpha_cumprod), as in DDIM.
        t = int(timestep)
        a = self.scheduler.alphas_cumprod[t] if t > 0 else torch.as_tensor(self.scheduler.final_alpha_cumprod)
        return a.sqrt() * self.noise - (1 - a).sqrt() * self.clean  # v = sqrt(a) eps - sqrt(1 - a) x0


@pytest.fixture
def latents():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 4, 5, 5, generator=g), torch.randn(1, 3, 4, 5, 5, generator=g)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ddim_inversion_with_oracle_reaches_forward_noised_latents(latents, kind):
    clean, noise = latents
    sched = CogVideoXDDIMScheduler(prediction_type=kind, timestep_spacing="trailing", set_alpha_to_one=True)
    bb = OracleBackbone(sched, clean, noise, kind)
    inverted, t = prepare_latents(bb, clean, "invert", 3, 10, noise)
    added, t_add = prepare_latents(bb, clean, "add", 3, 10, noise)
    assert t == t_add
    assert torch.allclose(inverted, added, atol=1e-4)
    assert bb.calls == 7  # steps 9, 8, ..., 3 of the 10-step schedule


def test_flow_inversion_with_oracle_reaches_forward_noised_latents(latents):
    clean, noise = latents
    bb = OracleBackbone(FlowMatchEulerDiscreteScheduler(), clean, noise, "flow")
    inverted, t = prepare_latents(bb, clean, "invert", 2, 8, noise)
    sigma = float(t) / 1000
    assert torch.allclose(inverted, (1 - sigma) * clean + sigma * noise, atol=1e-5)
    added, _ = prepare_latents(bb, clean, "add", 2, 8, noise)
    assert torch.allclose(inverted, added, atol=1e-5)


def test_clean_mode_keeps_latents_and_checks_the_step(latents):
    clean, noise = latents
    bb = OracleBackbone(FlowMatchEulerDiscreteScheduler(), clean, noise, "flow")
    out, t = prepare_latents(bb, clean, "clean", 0, 8, noise)
    assert out is clean and float(t) == float(bb.timesteps(8)[0])
    with pytest.raises(UserError, match="valid steps are 0..7"):
        prepare_latents(bb, clean, "add", 8, 8, noise)
    with pytest.raises(UserError, match="unknown noise mode"):
        prepare_latents(bb, clean, "blur", 1, 8, noise)
