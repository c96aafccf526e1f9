"""``python -m fastframe``: the command line (see ``fastframe.cli``)."""
import sys

from .cli import main

sys.exit(main())
