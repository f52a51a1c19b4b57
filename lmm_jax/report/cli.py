"""Command line: ``lmm-jax fit DATA.csv "formula"`` and ``lmm-jax example``.

Examples::

    lmm-jax example
    lmm-jax fit data.csv "y ~ x + (x | g)" --ml --json fit.json --plot fit.png
    lmm-jax fit data.csv "y ~ x + (1 | g)" --ddf kenward-roger --bootstrap 1000 --seed 1
    lmm-jax example --bootstrap 100000 --chunk-size 4096     # progress on stderr, chunk by chunk
    python -m lmm_jax example

Exit status: 0 on success, 2 for a problem with the input (unreadable file,
bad formula, data that do not fit the formula, bad option, a ``--bootstrap``
whose replicate estimates would not fit in half of the machine's memory,
checked before the fit), 1 for an unexpected internal error (``--debug`` shows
its traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..errors import LMMError
from ..runtime.scope import entry_point

if TYPE_CHECKING:  # pragma: no cover
    from ..results import LMMResult

EXAMPLE_DATASET = "sleepstudy"
EXAMPLE_FORMULA = "Reaction ~ Days + (Days | Subject)"
DDF_METHODS = ("satterthwaite", "kenward-roger")


class InputError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) such as 0.95, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) such as 0.95, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    common.add_argument("--ddf", choices=DDF_METHODS, default="satterthwaite",
                        help="denominator degrees of freedom for the fixed-effects t tests and intervals "
                             "(default: satterthwaite)")
    common.add_argument("--level", type=_level, default=0.95, help="confidence level of intervals (default 0.95)")
    common.add_argument("--bootstrap", type=_positive_int, metavar="N",
                        help="also run a parametric bootstrap with N replicates and print percentile intervals")
    common.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    common.add_argument("--chunk-size", type=_positive_int, metavar="C",
                        help="bootstrap replicates per compiled call (default: a power of two, at most 2,048 on "
                             "the CPU and 2^24 simulated values); progress is shown when there is more than one")
    common.add_argument("--json", metavar="OUT", help="write the estimates (and intervals) as JSON to OUT")
    common.add_argument("--plot", metavar="OUT.png",
                        help="write a one-page figure (coefficients, random effects, residuals, QQ) to OUT.png; "
                             "needs matplotlib: pip install 'lmm_jax[plot]'")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")

    p = argparse.ArgumentParser(prog="lmm-jax",
                                description="Fit lme4-style linear mixed models with a JAX likelihood.",
                                epilog='example: lmm-jax fit data.csv "y ~ x + (x | g)" --plot fit.png')
    p.add_argument("--version", action="version", version=f"lmm_jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{fit,example}")
    f = sub.add_parser("fit", parents=[common], help="fit a model to a CSV file and print lme4's summary",
                       description="Fit a linear mixed model to a CSV file and print lme4's summary.")
    f.add_argument("data", help="CSV file with a header row")
    f.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (x | g)"')
    sub.add_parser("example", parents=[common],
                   help=f"fit {EXAMPLE_FORMULA} to the bundled {EXAMPLE_DATASET} data",
                   description=f"Fit {EXAMPLE_FORMULA} to the bundled {EXAMPLE_DATASET} data.")
    return p


# -- pieces ------------------------------------------------------------------------

def read_data(path: str) -> pd.DataFrame:
    """Read a CSV file, turning every way it can fail into an :class:`InputError`."""
    if not os.path.exists(path):
        raise InputError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise InputError(f"{path!r} is a directory; give a CSV file")
    try:
        data = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path!r} is empty; it needs a header row and data rows") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read {path!r} as CSV: {e}") from None
    if data.empty:
        raise InputError(f"{path!r} has a header but no data rows")
    return data


def _check_writable(path: str | None, option: str) -> None:
    """Before the fit: an output path that cannot be written is bad input (exit 2), not a failure after it."""
    if path is None:
        return
    if os.path.isdir(path):
        example = os.path.join(path, "fit.json" if option == "--json" else "fit.png")
        raise InputError(f"{option} {path!r} is a folder; give a file name such as {example!r}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path!r}: the file exists and is not writable")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"{option} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{option} {path!r}: folder {folder!r} is not writable")


def coefficient_table(result: "LMMResult", ddf: str = "satterthwaite", level: float = 0.95) -> pd.DataFrame:
    """Fixed effects with t tests and t intervals under the chosen ddf method
    (``result.coefs``).

    Args:
        result: a fitted model.
        ddf: ``"satterthwaite"`` or ``"kenward-roger"``.
        level: confidence level of the intervals.

    Returns:
        DataFrame indexed by term with columns ``estimate, std_error, df,
        t, p, lower, upper``.
    """
    return result.coefs(ddf=ddf, level=level)


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(x: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if x < 1000 or unit == "TB":
            return f"{x:.0f} {unit}" if unit == "bytes" else f"{x:.1f} {unit}"
        x /= 1000
    raise AssertionError("unreachable")


def check_bootstrap_memory(n: int, per_replicate: int, memory: int | None) -> None:
    """Refuse (:class:`InputError`) a bootstrap whose replicate estimates
    (``per_replicate`` bytes each, :func:`~lmm_jax.batched.bootstrap.replicate_bytes`)
    need more than half of ``memory``: the simulated responses stream a
    chunk at a time, but every replicate's estimates are kept for the
    intervals."""
    if memory is None:
        return
    limit = memory // 2
    if n * per_replicate > limit:
        raise InputError(f"--bootstrap {n} would hold about {_bytes(n * per_replicate)} of replicate estimates "
                         f"({per_replicate} bytes each), more than half of this machine's "
                         f"{_bytes(memory)} of memory ({_bytes(limit)}); give --bootstrap {limit // per_replicate} "
                         "or fewer (percentile intervals settle with 1,000 to 10,000 replicates)")


def bootstrap_chunk_size(result: "LMMResult", n: int, chunk_size: int | None) -> int:
    """The chunk :func:`~lmm_jax.batched.bootstrap.run_bootstrap` uses: ``chunk_size`` or its default."""
    import jax

    from ..batched.bootstrap import default_chunk_size

    if chunk_size is not None:
        return chunk_size
    return default_chunk_size(n, result.nobs, jax.device_count(), jax.default_backend())


def run_bootstrap(result: "LMMResult", n: int, seed: int, level: float, chunk_size: int | None = None
                  ) -> tuple[Any, pd.DataFrame, float]:
    """Parametric bootstrap through ``result.bootstrap``: (bootstrap result,
    percentile intervals, seconds). Runs in chunks of ``chunk_size``
    replicates (default: :func:`~lmm_jax.batched.bootstrap.default_chunk_size`),
    with a progress bar on stderr when there is more than one chunk."""
    chunk = bootstrap_chunk_size(result, n, chunk_size)
    t0 = time.perf_counter()
    boot = result.bootstrap(n, seed, chunk_size=chunk, progress=n > chunk)
    ci = boot.confint(level=level)
    return boot, ci, time.perf_counter() - t0


def result_to_dict(fit: "LMMResult") -> dict:
    """The main estimates of a fit as plain JSON-able values.

    Args:
        fit: a fitted model.

    Returns:
        A dict with the formula, criterion, log-likelihood, AIC/BIC, sigma,
        theta, the fixed-effects table and lme4's ``VarCorr`` rows.
    """
    return {
        "formula": fit.model.formula, "reml": fit.reml, "nobs": fit.nobs, "converged": fit.converged,
        "singular": fit.singular, "loglik": fit.loglik, "objective": fit.objective, "aic": fit.aic,
        "bic": fit.bic, "sigma": fit.sigma, "theta": fit.theta.tolist(),
        "fixef": fit.coef_table.reset_index(names="term").to_dict(orient="records"),
        "varcorr": fit.varcorr.to_dict(orient="records"),
    }


def _json_value(x: Any) -> Any:
    """float/int for numpy scalars; None for NaN and infinities (JSON has neither)."""
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _json_value(obj)


def _format_table(table: pd.DataFrame, title: str) -> str:
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        return f"{title}\n{table.to_string(float_format=lambda v: f'{v:.5g}')}"


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lmm-jax: warning: {message}", file=sys.stderr)


# -- entry point --------------------------------------------------------------------

@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lmm-jax`` and ``python -m lmm_jax``.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The process exit status: 0 success, 2 bad input, 1 internal error.
    """
    args = _build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            return _run(args)
    except (InputError, LMMError) as e:
        if args.debug:
            raise
        kind = "" if isinstance(e, InputError) else f"{type(e).__name__}: "
        print(f"lmm-jax: {kind}{e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI turns every failure into one message
        if args.debug:
            raise
        print(f"lmm-jax: unexpected {type(e).__name__}: {e}\n(run again with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from .. import LMM, datasets

    _check_writable(args.json, "--json")
    _check_writable(args.plot, "--plot")
    if args.plot:
        try:
            import matplotlib
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'lmm_jax[plot]'") from None
        matplotlib.use("Agg")
    if args.command == "example":
        data, formula = datasets.load(EXAMPLE_DATASET), EXAMPLE_FORMULA
    else:
        data, formula = read_data(args.data), args.formula

    t0 = time.perf_counter()
    model = LMM(formula, data)
    if args.bootstrap:
        from ..batched.bootstrap import replicate_bytes

        check_bootstrap_memory(args.bootstrap, replicate_bytes(model), physical_memory())
    if args.command == "example":
        print(f"lmm_jax example: {formula} on the bundled {EXAMPLE_DATASET} data\n")
    result = model.fit(reml=not args.ml)
    elapsed = time.perf_counter() - t0
    print(result.summary(ddf=args.ddf))
    print(f"\n(fitted in {elapsed:.2f} s, including JAX compilation; {result.iterations} Newton iterations)")

    out = result_to_dict(result)
    coefs = coefficient_table(result, args.ddf, args.level)
    pct = f"{100 * args.level:g}%"
    print("\n" + _format_table(coefs, f"Fixed effects with {args.ddf} df and {pct} confidence intervals:"))
    out["ddf"] = args.ddf
    out["level"] = args.level
    out["coefficients"] = coefs.reset_index(names="term").to_dict(orient="records")

    if args.bootstrap:
        boot, ci, seconds = run_bootstrap(result, args.bootstrap, args.seed, args.level, args.chunk_size)
        print("\n" + _format_table(ci, f"Parametric bootstrap ({args.bootstrap} replicates, seed {args.seed}, "
                                       f"{seconds:.2f} s): {pct} percentile intervals"))
        ci_records = ci.reset_index(names="parameter") if ci.index.name is None else ci.reset_index()
        out["bootstrap"] = {"n": args.bootstrap, "seed": args.seed, "seconds": seconds,
                            "chunk_size": boot.chunk_size, "n_failed": boot.n_failed,
                            "n_nonconverged": boot.n_nonconverged,
                            "confint": ci_records.to_dict(orient="records")}

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_clean(out), fh, indent=1)
        print(f"\nwrote {args.json}")
    if args.plot:
        from .plotting import overview

        fig = overview(result, level=args.level, ddf=args.ddf)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
