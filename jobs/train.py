"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train.py --images ... --out ...`.

Connects to the cluster the job was submitted to (RAY_ADDRESS is set by `ray job submit`), or starts a
private local Ray when run directly; the options are those of `tileseg train`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's tileseg, not an old install

from tileseg.train import add_arguments, run_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the training options and train (on RAY_ADDRESS's cluster, or an embedded Ray)."""
    parser = argparse.ArgumentParser(prog="jobs/train.py", description="Train a tileseg model on Ray Train.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
