"""``python -m rfest``: the ``rfest`` command (see :mod:`rfest._cli`)."""

import sys

from rfest._cli import main

if __name__ == "__main__":
    sys.exit(main())
