import sys

from recordkit.cli import main

sys.exit(main())
