"""``python -m loadertop``: the same as the ``loadertop`` command."""

import sys

from loadertop.cli import main

sys.exit(main())
