"""``python -m medgmae.data.phantom``: the ``medgmae-phantom`` command."""

import sys

from medgmae import launch

sys.exit(launch.phantom())
