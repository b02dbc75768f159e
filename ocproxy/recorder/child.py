"""Entry point of the recorder process: ``python -m ocproxy.recorder.child FD``."""

import sys

from ocproxy.recorder.process import child_main

if __name__ == "__main__":
    child_main(int(sys.argv[1]))
