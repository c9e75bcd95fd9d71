"""Shared behaviour of the flow-matching families (HunyuanVideo, Wan)."""

from __future__ import annotations

import torch


class FlowMatchingMixin:
    """Flow-matching backbones predict the flow (noise - clean sample) and noise by linear interpolation."""

    def prediction_type(self) -> str:
        return "flow"

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        # Both stock flow schedulers (FlowMatchEulerDiscrete, UniPC with flow sigmas) use timestep =
        # sigma * num_train_timesteps and x_t = (1 - sigma) x_0 + sigma * noise; their own
        # scale_noise/add_noise only accept timesteps of the schedule currently set on the live
        # scheduler, which a caller noising a real video to one step has not set.
        sigma = torch.as_tensor(timestep, device=latents.device, dtype=torch.float64).reshape(-1)
        sigma = (sigma / self.scheduler.config.num_train_timesteps).to(latents.dtype)
        sigma = sigma.view(-1, *([1] * (latents.dim() - 1)))
        return (1 - sigma) * latents + sigma * noise
