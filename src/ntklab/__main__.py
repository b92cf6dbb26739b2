"""``python -m ntklab`` = the ``ntklab`` command."""

import sys

from ntklab.cli import main

sys.exit(main())
