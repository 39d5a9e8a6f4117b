import sys

from p2core.cli import main

sys.exit(main())
