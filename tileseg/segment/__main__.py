"""`python -m tileseg.segment ARGS` = `tileseg segment ARGS`."""

import sys

from tileseg.segment import main

sys.exit(main())
