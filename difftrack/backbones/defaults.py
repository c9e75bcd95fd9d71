"""The method's and the trackers' defaults of a backbone, keyed by the transformer's architecture so that a
registry name, a hub id and a local directory of the same weights get the same, and readable from a config
alone (`difftrack models` and the commands' checks use them before any weights load)."""

from __future__ import annotations

from typing import ClassVar


class MethodDefaults:
    """Backbone mixin: tracking layers and step, CAG layers, the paper's tracking size and the default tracker."""

    # {(attention layers, heads): {"track_layers": (...), "track_step": (step, num_steps), "cag_layers": (...),
    # "paper_size": (height, width), "paper_chunk": frames}}; what a family's checkpoints were published with.
    method_defaults: ClassVar[dict[tuple[int, int], dict]] = {}
    fallback_track_step: ClassVar[tuple[int, int]] = (49, 50)
    # The tracker `difftrack track` runs by default: the paper's procedure ("paper") unless difftrack's own
    # tracker has settings calibrated for the family (``tracker_settings``).
    default_tracker: ClassVar[str] = "paper"

    def tracker_settings(self) -> dict:
        """Settings of difftrack's own tracker calibrated for this model (TrackerConfig fields); none by default,
        so a real checkpoint never inherits values chosen on another model."""
        return {}

    @classmethod
    def architecture(cls, config) -> tuple[int, int]:
        """(attention layers, heads) of a transformer config: the key of ``method_defaults``."""
        return config["num_layers"], config["num_attention_heads"]

    @classmethod
    def defaults_for(cls, config) -> dict:
        """The method's tracking layers, (step, schedule length) and CAG layers for a transformer config:
        the published ones for a known architecture, else the middle layer(s) and ``fallback_track_step``."""
        return cls.defaults_for_architecture(*cls.architecture(config))

    @classmethod
    def defaults_for_architecture(cls, n: int, heads: int) -> dict:
        """:meth:`defaults_for` of a transformer with ``n`` attention layers of ``heads`` heads."""
        known = cls.method_defaults.get((n, heads), {})
        middle = sorted({max(n // 2 - 1, 0), n // 2}) if n > 1 else [0]
        return {"track_layers": list(known.get("track_layers", ())) or [n // 2],
                "track_step": tuple(known.get("track_step", cls.fallback_track_step)),
                "cag_layers": list(known.get("cag_layers", ())) or middle,
                "tracker": cls.default_tracker,
                # (height, width) and frames per forward of the paper's tracking when they are not the model's
                # trained ones (None: the trained ones)
                "paper_size": known.get("paper_size"), "paper_chunk": known.get("paper_chunk")}

    def track_layers(self) -> list[int]:
        """Tracking layers without an analysis recommendation: the method's for a known architecture, else
        the middle layer."""
        return self.defaults_for(self.transformer.config)["track_layers"]

    @property
    def default_track_step(self) -> tuple[int, int]:
        """(step index, schedule length) tracking reads without a recommendation."""
        return self.defaults_for(self.transformer.config)["track_step"]

    def paper_geometry(self) -> tuple[tuple[int, int], int]:
        """((height, width), frames per forward) of the paper's tracking procedure: the sizes its release used
        for a known architecture, else the model's trained size and tracking window."""
        known = self.defaults_for(self.transformer.config)
        size = known["paper_size"] or self.generation_size()[1:]
        return tuple(size), known["paper_chunk"] or self.frame_window

    def default_cag_layers(self) -> list[int]:
        """The method's CAG layers for a known architecture; otherwise the two middle layers."""
        return self.check_layers(self.defaults_for(self.transformer.config)["cag_layers"])
