"""``python -m optimum_awp.cli``."""

import sys

from . import main

sys.exit(main())
