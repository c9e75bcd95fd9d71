"""List the backbone registry: name, source, whether its weights are present here, and the method's
defaults for its architecture (tracking layer and step, CAG layers), read from its config.

The embedded default comes first. Any hub id or local diffusers pipeline directory also works as
--model (with the same defaults for the same architecture); this list only names the ones difftrack
knows by name. Defaults show as "-" for a checkpoint whose config is not in the local cache.
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
    width = max(len(r["name"]) for r in rows)
    swidth = max(len(r["source"]) for r in rows)
    for r in rows:
        tag = " (default)" if r["name"] == DEFAULT_BACKBONE else ""
        print(f"{r['name']:<{width}}  {r['source']:<{swidth}}  weights {r['weights']:<7}  {_defaults(r['defaults']):<26}  "
              f"{r['description']}{tag}")


def _defaults(d: dict | None) -> str:
    if d is None:
        return "defaults -"
    step, num_steps = d["track_step"]
    cag = ",".join(map(str, d["cag_layers"])) if d["cag_layers"] else "-"
    return f"track {','.join(map(str, d['track_layers']))} @ {step}/{num_steps}, CAG {cag}"
