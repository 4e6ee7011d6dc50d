import sys

from sandbox.cli import main

if __name__ == "__main__":  # spawned slot workers import this module too
    sys.exit(main())
