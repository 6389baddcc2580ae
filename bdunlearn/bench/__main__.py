"""``python -m bdunlearn.bench [--quick] [--csv PATH]``: print the performance figures."""

import sys

from .harness import main

sys.exit(main())
