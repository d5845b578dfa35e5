"""``python -m xlreward.cli``: the ``xlreward`` command, for subprocesses that must use this interpreter."""

import sys

from xlreward.cli.main import main

sys.exit(main())
