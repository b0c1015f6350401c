"""``python -m medgmae.data.phantom``: the ``medgmae-phantom`` command."""

import sys

from medgmae.data.phantom.cli import main

sys.exit(main())
