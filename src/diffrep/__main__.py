import sys

from diffrep.cli import main

sys.exit(main())
