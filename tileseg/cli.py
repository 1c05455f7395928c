"""The `tileseg` command: segment, train, evaluate, export and inspect models from one entry point."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model artifact's metadata and parameter count."""
    from tileseg.model import ArtifactError, load_model

    try:
        model, meta = load_model(args.model)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = dict(meta)
    meta["params"] = int(model.count_params())
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    print(f"model       {args.model}")
    print(f"arch        {meta['arch']}  ({meta['params']:,} parameters)")
    print(f"classes     {', '.join(meta['classes'])}")
    print(f"bands       {meta['bands']}")
    print(f"mean / std  {meta['mean']} / {meta['std']}")
    print(f"tile        {meta['tile']}")
    for key, value in meta.items():
        if key in {"arch", "params", "classes", "bands", "mean", "std", "tile", "training"}:
            continue
        print(f"{key:<11} {json.dumps(value) if isinstance(value, dict | list) else value}")
    training = dict(meta.get("training") or {})
    long_items = {k: training.pop(k) for k in ("history", "commands", "best") if k in training}
    for key, value in training.items():
        print(f"training.{key:<14} {json.dumps(value) if isinstance(value, dict | list) else value}")
    if long_items:
        print(f"({', '.join(long_items)}: see `tileseg info {args.model} --json`)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write each image's mask of a store as a Cloud-Optimized GeoTIFF."""
    from tileseg import store

    try:
        paths = store.export_cogs(args.store, args.cog)
    except (store.StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tileseg",
        description="Segment huge georeferenced images with an attention U-Net on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="show a model artifact's metadata and parameter count")
    info.add_argument("model", help="a .keras artifact written by tileseg")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")
    info.set_defaults(func=cmd_info)

    from tileseg import segment

    seg = sub.add_parser(
        "segment",
        help="segment images into a georeferenced Zarr store",
        description=segment.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_arguments(seg)
    seg.set_defaults(func=segment.run_from_args)

    from tileseg import train

    tr = sub.add_parser("train", help="train a model on image/mask pairs with Ray Train")
    train.add_arguments(tr)
    tr.set_defaults(func=train.run_from_args)

    from tileseg import evaluate

    ev = sub.add_parser("evaluate", help="score a store's masks against ground truth (Dask, out of core)")
    evaluate.add_arguments(ev)
    ev.set_defaults(func=evaluate.run_from_args)

    ex = sub.add_parser("export", help="export a store's masks as Cloud-Optimized GeoTIFFs")
    ex.add_argument("store", help="a .zarr store written by `tileseg segment`")
    ex.add_argument("--cog", required=True, metavar="DIR", help="directory for one COG per image")
    ex.set_defaults(func=cmd_export)

    from tileseg.vectorize import options as vectorize

    vec = sub.add_parser(
        "vectorize",
        help="polygons of a store's masks (GeoParquet, GeoPackage, FlatGeobuf, GeoJSON)",
        description=vectorize.DESCRIPTION,
    )
    vectorize.add_arguments(vec)
    vec.set_defaults(func=vectorize.run_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
