"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/segment.py INPUT... --out STORE.zarr`.

The same options, parser and error handling as `tileseg segment` (tileseg.cli). Connects to the cluster
the job was submitted to (RAY_ADDRESS is set by `ray job submit`); run directly, it starts an embedded
Ray. Paths must be absolute or URIs, since the job runs in an unpacked copy of the working dir.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's tileseg, if not installed

from tileseg.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("segment"))
