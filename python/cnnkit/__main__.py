"""``python -m cnnkit`` runs the command line (see cnnkit.cli)."""

import sys

from .cli import main

sys.exit(main())
