"""``python -m dramaverse``: the same as the ``dramaverse`` command."""

import sys

from dramaverse.cli import main

sys.exit(main())
