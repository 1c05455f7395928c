"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/segment.py INPUT... --out STORE.zarr`.

Connects to the cluster the job was submitted to (RAY_ADDRESS is set by `ray job submit`); run
directly, it starts an embedded Ray like `tileseg segment`. Paths must be absolute or URIs, since the
job runs in an unpacked copy of the working dir.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's tileseg, if not installed

from tileseg.segment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
