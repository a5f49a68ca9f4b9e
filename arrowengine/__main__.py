"""``python -m arrowengine``: the same command as the ``arrowengine`` console script."""

import sys

from arrowengine.cli import main

if __name__ == "__main__":
    sys.exit(main())
