"""The sub-commands (one module each: ``add_arguments`` and ``run``) and the choices they share."""

from __future__ import annotations

from difftrack.backbones import check_known_layers
from difftrack.errors import UserError


def explicit_layers(values: list[str] | None, option: str) -> list[int] | None:
    """The layers ``option`` names as integers; None when it is not given or is `auto`."""
    if values is None or values == ["auto"]:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UserError(f"{option} takes integers or `auto`, got {' '.join(values)}") from None


def check_layers_before_loading(model: str, values: list[str] | None, option: str) -> None:
    """Refuses integer layers outside the model's range where the registry knows its architecture without
    loading it."""
    layers = explicit_layers(values, option)
    if layers is not None:
        try:
            check_known_layers(model, layers)
        except UserError as exc:
            raise UserError(f"{option}: {exc}") from None


def chosen_layers(values: list[str] | None, option: str, recommendation, backbone):
    """(layers, steps, num_steps) from ``option``: None for each when not given; `auto` reads ``recommendation``
    (an analysis directory or its recommendation.json), else the recommendation shipped with the model; integer
    layers are checked against the model, and steps come only from a recommendation."""
    if values is None:
        return None, None, None
    if values == ["auto"]:
        return backbone.recommendation(recommendation)
    try:
        return backbone.check_layers(explicit_layers(values, option)), None, None
    except UserError as exc:
        raise UserError(f"{option}: {exc}") from None
