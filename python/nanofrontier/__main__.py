"""``python -m nanofrontier ...`` runs the command line (see nanofrontier.tour.cli)."""

import sys

from nanofrontier.tour.cli import main

if __name__ == "__main__":
    sys.exit(main())
