"""``python -m glare_core`` is the ``glare`` command."""

import sys

from .cli import main

sys.exit(main())
