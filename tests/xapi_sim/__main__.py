"""``python3 -m xapi_sim serve …`` (with the directory holding this package on PYTHONPATH)."""

import sys

from xapi_sim.server import main

if __name__ == "__main__":
    sys.exit(main())
