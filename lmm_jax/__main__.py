"""``python -m lmm_jax`` and ``lmm-jax``: the command line (see :mod:`lmm_jax.report.cli`).

The command's process is lmm_jax's own, so it takes the process-wide tuning of
:func:`lmm_jax.runtime.configure` (faster compiles, JAX's persistent cache; the
``LMM_JAX_*`` switches turn parts off) before it runs :func:`lmm_jax.report.cli.main`.
"""

import sys

from .report.cli import main as cli_main
from .runtime.process import configure


def main() -> int:
    """Entry point of the ``lmm-jax`` script: :func:`configure`, then the command line."""
    configure()
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
