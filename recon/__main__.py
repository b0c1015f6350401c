"""``python -m recon``: the ``medgmae-recon`` command line."""

import sys

from recon.cli import main

sys.exit(main())
