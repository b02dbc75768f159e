"""``python -m ocproxy.sim csms|chargers ...``: the same as ``ocproxy sim ...``."""

import sys

from ocproxy.cli import main

sys.exit(main(["sim", *sys.argv[1:]]))
