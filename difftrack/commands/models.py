"""List the backbone registry: name, source and whether its weights are present here.

The embedded default comes first. Any hub id or local diffusers pipeline directory also works as
--model; this list only names the ones difftrack knows by name.
"""

from difftrack.backbones import DEFAULT_BACKBONE, list_backbones


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args):
    entries = list_backbones()
    rows = [{"name": e.name, "source": e.source, "weights": "present" if e.weights_present() else "absent",
             "description": e.description} for e in entries]
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    swidth = max(len(r["source"]) for r in rows)
    for i, r in enumerate(rows):
        tag = " (default)" if r["name"] == DEFAULT_BACKBONE else ""
        print(f"{r['name']:<{width}}  {r['source']:<{swidth}}  weights {r['weights']:<7}  {r['description']}{tag}")
