"""``python -m mscsa_lab``: see ``mscsa_lab.cli``."""
import sys

from .cli import main

sys.exit(main())
