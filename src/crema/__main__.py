"""``python -m crema``: the ``crema`` command."""

import sys

from crema.workflows.cli import main

if __name__ == "__main__":  # not when a tool imports every module of the package
    sys.exit(main())
