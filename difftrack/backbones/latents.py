"""Video <-> latents of a backbone: the stock VAE's encoding and decoding, the stock pipeline's latent
normalisation, and the one path from uint8 frames to latents (:meth:`VideoLatents.encode_frames`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class VideoLatents:
    """Backbone mixin over its ``vae`` (pixels in [-1, 1] as (B, T, 3, H, W), latents as (B, F, C, h, w))."""

    def encode_video(self, video: torch.Tensor, frame_as_latent: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels (B, T, 3, H, W) in [-1, 1] -> latents (B, F, C, h, w) as the transformer takes them.

        The stock video VAEs take (B, C, T, H, W); ``frame_as_latent`` encodes every RGB frame as a
        one-frame video, so latent frame f is RGB frame f (:meth:`frames_as_tokens` makes them model input).
        Latents are the posterior's mode, or with ``generator`` (frame as latent only) a sample of it drawn
        frame by frame in order, as the DiffTrack release encodes.
        """
        import torch

        b, t = video.shape[:2]
        # self.device, not the VAE's: under model CPU offload the VAE waits on the CPU until its hook moves it
        # (and only it, not its input) to the execution device.
        video = video.to(self.device, self.vae.dtype)
        if generator is not None and not frame_as_latent:
            raise ValueError("posterior sampling is implemented for frame-as-latent encoding only")
        if not frame_as_latent:
            self.check_frame_count(t)
        with torch.no_grad():
            if frame_as_latent:
                frames = video.reshape(b * t, 1, *video.shape[2:]).permute(0, 2, 1, 3, 4)
                if generator is None:
                    lat = self.vae.encode(frames).latent_dist.mode()  # (B*T, C, 1, h, w)
                else:
                    lat = torch.cat([self.vae.encode(f[None]).latent_dist.sample(generator) for f in frames])
                lat = lat.reshape(b, t, *lat.shape[1:]).squeeze(3)
            else:
                lat = self.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode().permute(0, 2, 1, 3, 4)
                # Whole temporal patches, padded in front as the stock pipeline pads (with the first frame here, a
                # real video having no noise to pad with), so that token frame j ends on latent frame 2j.
                lat = torch.cat([lat[:, :1]] * self.latent_frame_padding(lat.shape[1]) + [lat], dim=1)
            return self.normalize_latents(lat).to(self.dtype)

    def frames_as_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents with one latent frame per RGB frame (``frame_as_latent``) -> what the transformer takes so
        that every token frame holds one of them: each repeated ``temporal_patch`` times (as is for 1)."""
        return latents.repeat_interleave(self.temporal_patch, dim=1) if self.temporal_patch > 1 else latents

    def encode_frames(self, video: np.ndarray, frame_as_latent: bool = False) -> torch.Tensor:
        """uint8 RGB frames (T, H, W, 3) of any size -> latents (1, F, C, h, w): resized (area) to
        :meth:`working_size`, scaled to [-1, 1], encoded on the backbone's device. The one way a real
        video enters a model (tracking, analysis, probing)."""
        import cv2
        import torch

        height, width = video.shape[1:3]
        wh, ww = self.working_size(height, width)
        frames = np.stack([cv2.resize(f, (ww, wh), interpolation=cv2.INTER_AREA) for f in video])
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None]
        return self.encode_video(pixels.to(self.device), frame_as_latent=frame_as_latent)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, F, C, h, w) -> pixels (B, T, 3, H, W) in [-1, 1]."""
        import torch

        lat = self.denormalize_latents(latents.to(self.vae.dtype)).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            return self.vae.decode(lat).sample.permute(0, 2, 1, 3, 4).clamp(-1, 1)

    def latent_statistics(self) -> tuple:
        """(mean, std, scale) of the stock pipeline's latent normalisation (latents - mean) * scale / std; mean
        and std a number or one per channel. By default the VAE's scaling factor alone."""
        return 0.0, 1.0, self.vae.config.scaling_factor

    def _latent_stats(self, like: torch.Tensor):
        import torch

        mean, std, scale = self.latent_statistics()
        shape = (1, 1, -1, 1, 1)  # (B, F, C, h, w) layout
        mean, std = (torch.as_tensor(v, dtype=torch.float64).to(like).view(shape) for v in (mean, std))
        return mean, std, scale

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> the transformer's latent space."""
        mean, std, scale = self._latent_stats(latents)
        return (latents - mean) * scale / std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std, scale = self._latent_stats(latents)
        return latents * std / scale + mean
