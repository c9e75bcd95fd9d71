"""The sampler's schedule of a backbone and forward noising along it: one schedule for generation, tracking and
analysis, set as the family's stock pipeline sets it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class SamplerSchedule:
    """Backbone mixin over its stock diffusers ``scheduler``."""

    def schedule(self, num_steps: int, device=None):
        """A copy of the scheduler set to the sampler's ``num_steps``-step schedule: what `generate` steps
        through and what tracking and analysis index, one schedule for both."""
        import copy

        sched = copy.deepcopy(self.scheduler)
        self.set_timesteps(sched, num_steps, device)
        return sched

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        """How the family's stock pipeline sets its schedule (adapters override)."""
        scheduler.set_timesteps(num_steps, device=device)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The sampler's timestep schedule; step index i of ``num_steps`` is ``timesteps(num_steps)[i]``."""
        return self.schedule(num_steps).timesteps

    def prediction_type(self) -> str:
        """What the model predicts: "epsilon", "v_prediction" or "flow" (noise - clean sample)."""
        return getattr(self.scheduler.config, "prediction_type", "epsilon")

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        """Forward-diffuse clean latents to ``timestep``.

        Flow models: x_t = (1 - sigma) x_0 + sigma * noise with sigma = t / num_train_timesteps, written out
        because the stock flow schedulers' scale_noise/add_noise only accept timesteps of the schedule
        currently set on the live scheduler. Others: the stock scheduler's own add_noise.
        """
        import torch

        if self.prediction_type() == "flow":
            sigma = torch.as_tensor(timestep, device=latents.device, dtype=torch.float64).reshape(-1)
            sigma = (sigma / self.scheduler.config.num_train_timesteps).float()
            sigma = sigma.view(-1, *([1] * (latents.dim() - 1)))
            return ((1 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)
        t = torch.as_tensor(timestep, device=latents.device).reshape(1)
        return self.scheduler.add_noise(latents, noise, t.long() if not t.is_floating_point() else t)
