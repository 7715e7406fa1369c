import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main())
