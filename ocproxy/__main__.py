"""``python -m ocproxy``: the same as the ``ocproxy`` command."""

import sys

from ocproxy.cli import main

sys.exit(main())
