"""``python -m recon``: the ``medgmae-recon`` command line (Ctrl-C while it starts: one line, status 130)."""

import sys

from medgmae import launch

sys.exit(launch.recon())
