"""List the models difftrack knows by name, whether their weights are here, and the method's defaults.

For each: its source, whether its weights are present here, and the method's defaults for its architecture
(tracking layers, the denoising step tracking reads, CAG layers, the tracker `difftrack track` runs by default:
paper for real checkpoints, difftrack where difftrack's tracker is calibrated for the model), read from its
config, or from the architecture difftrack records for it when the config is not here.

The embedded default comes first. Any hub id or local diffusers pipeline directory also works as
--model (with the same defaults for the same architecture); this list only names the ones difftrack
knows by name.
"""

from difftrack.backbones import DEFAULT_BACKBONE, list_backbones


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args):
    entries = list_backbones()
    rows = [{"name": e.name, "source": e.source, "weights": "present" if e.weights_present() else "absent",
             "defaults": e.defaults(), "description": e.description} for e in entries]
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return
    table = [HEADER] + [[r["name"], r["source"], r["weights"], *_defaults(r["defaults"]),
                         r["description"] + (" (default)" if r["name"] == DEFAULT_BACKBONE else "")] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    for row in table:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[-1])


HEADER = ["name", "source", "weights", "tracking layers", "tracking step", "CAG layers", "tracker", "description"]


def _defaults(d: dict | None) -> list[str]:
    """Tracking layers, step ("44 of 50": step 44 of a 50-step schedule), CAG layers and the default tracker, "-"
    where unknown."""
    if d is None:
        return ["-", "-", "-", "-"]
    step, num_steps = d["track_step"]
    return [", ".join(map(str, d["track_layers"])), f"{step} of {num_steps}",
            ", ".join(map(str, d["cag_layers"])) if d["cag_layers"] else "-", d["tracker"]]
