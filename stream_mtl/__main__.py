"""`python -m stream_mtl`: the `stream-mtl` command."""

import sys

from stream_mtl.cli import main

sys.exit(main())
