"""The `tileseg` command: segment, train, evaluate, export and inspect models from one entry point.

Each job module exposes a `COMMAND` (its options dataclass and run function); the parser is generated
from those, and `jobs/*.py` call `main` too, so every entry point parses the same options the same way.
tileseg's own errors (TilesegError) are caught here, once, and printed as one line with exit status 2; a
job stopped by a signal (Interrupted) prints its one line and exits 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tileseg.errors import TilesegError
from tileseg.interrupt import Interrupted
from tileseg.options import Command, add_options, from_args, option
from tileseg.ray_session import forbid_auto_connect, no_auto_connect
from tileseg.uri import redact

# Job subcommands, each the module that defines its COMMAND (imported when the parser is built).
JOB_MODULES = ("tileseg.segment", "tileseg.train", "tileseg.evaluate", "tileseg.vectorize.options")


@dataclass(frozen=True)
class InfoOptions:
    model: str = option(help="a .keras artifact written by tileseg", positional=True)
    json: bool = option(False, help="print the metadata as JSON")


def run_info(opts: InfoOptions) -> int:
    """Print a model artifact's metadata and parameter count."""
    from tileseg.model import load_model

    model, meta = load_model(opts.model)
    meta = meta.to_dict()
    meta["params"] = int(model.count_params())
    if opts.json:
        print(json.dumps(meta, indent=2))
        return 0
    print(f"model       {opts.model}")
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
        print(f"({', '.join(long_items)}: see `tileseg info {opts.model} --json`)")
    return 0


@dataclass(frozen=True)
class ExportOptions:
    store: str = option(help="a .zarr store written by `tileseg segment`", positional=True)
    cog: str = option(help="directory (or object-store prefix, s3://bucket/cogs/) for one COG per image", metavar="DIR")


def run_export(opts: ExportOptions) -> int:
    """Write each image's mask of a store as a Cloud-Optimized GeoTIFF."""
    from tileseg import store

    try:
        paths = store.export_cogs(opts.store, opts.cog)
    except OSError as exc:
        raise TilesegError(redact(f"{opts.store}: {exc}")) from None
    for path in paths:
        print(path)
    return 0


INFO = Command("info", "show a model artifact's metadata and parameter count", InfoOptions, run_info)
EXPORT = Command("export", "export a store's masks as Cloud-Optimized GeoTIFFs", ExportOptions, run_export)


def commands() -> list[Command]:
    """Every subcommand, in the order `tileseg --help` lists them."""
    jobs = [importlib.import_module(name).COMMAND for name in JOB_MODULES]
    return [INFO, *jobs, EXPORT]


def add_command(sub: argparse._SubParsersAction, cmd: Command) -> argparse.ArgumentParser:
    """The subcommand's parser, its options generated from the command's options dataclass."""
    parser = sub.add_parser(
        cmd.name,
        help=cmd.help,
        description=cmd.description or cmd.help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, cmd.options)
    parser.set_defaults(command=cmd)
    return parser


def build_parser(prog: str = "tileseg") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Segment huge georeferenced images with an attention U-Net on Ray."
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for cmd in commands():
        add_command(sub, cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `tileseg COMMAND ...`; tileseg's errors become one line on stderr and exit status 2; a job stopped
    by SIGINT/SIGTERM says what it left in one line and exits 130/143. Without `argv` this is the program
    (the `tileseg` script): from here on Ray starts in this process only through RaySession."""
    if argv is None:
        forbid_auto_connect()
    args = build_parser().parse_args(argv)
    cmd: Command = args.command
    try:
        with no_auto_connect():  # an in-process call (a test's) gets its Ray setting back
            return int(cmd.run(from_args(cmd.options, args)) or 0)
    except TilesegError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)  # never a credential, whatever the message holds
        return 2
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_status


def job_main(name: str, argv: Sequence[str] | None = None) -> int:
    """`jobs/<name>.py ARGS` = `tileseg <name> ARGS`: the Ray Jobs entrypoints share the CLI's parser."""
    if argv is None:
        forbid_auto_connect()
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
