import sys

from jobber.cli import main

sys.exit(main())
