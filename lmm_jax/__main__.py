"""``python -m lmm_jax``: the ``lmm-jax`` command line (see :mod:`lmm_jax.report.cli`)."""

import sys

from .report.cli import main

if __name__ == "__main__":
    sys.exit(main())
