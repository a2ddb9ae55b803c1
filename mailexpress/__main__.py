"""python -m mailexpress: the command line (see mailexpress.cli)."""
import sys

from .cli import main

sys.exit(main())
