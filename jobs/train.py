"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train.py --images ... --out ...`.

Connects to the cluster the job was submitted to (RAY_ADDRESS is set by `ray job submit`), or starts a
private local Ray when run directly; the options and their parsing are `tileseg train`'s (tileseg.cli).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's tileseg, not an old install

from tileseg.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("train"))
