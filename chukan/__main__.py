"""``python -m chukan``: the same as the ``chukan`` command."""

import sys

from chukan.cli import main

sys.exit(main())
