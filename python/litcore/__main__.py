import sys

from litcore.cli import main

sys.exit(main())
