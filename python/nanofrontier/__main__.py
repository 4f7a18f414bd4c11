"""``python -m nanofrontier ...`` runs the command line (see nanofrontier.cli)."""

import sys

from nanofrontier.cli import main

if __name__ == "__main__":
    sys.exit(main())
