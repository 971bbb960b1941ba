"""``python -m mscsa_lab`` (the same as the ``mscsa-lab`` command): see ``mscsa_lab.cli``."""
import sys

from mscsa_lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
