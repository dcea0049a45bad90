"""``python -m rtpick`` is the same as the ``rtpick`` console script."""

import sys

from rtpick.cli import main

sys.exit(main())
