"""`python -m recordkit`: the command line (see recordkit.cli)."""

import sys

from recordkit.cli import main

sys.exit(main())
