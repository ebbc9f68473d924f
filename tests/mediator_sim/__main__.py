"""``python3 -m mediator_sim serve|ask …`` (with the directory holding this package on PYTHONPATH)."""

import sys

from mediator_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
