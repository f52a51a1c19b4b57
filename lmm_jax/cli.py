"""Command line: ``lmm-jax fit DATA.csv "formula"`` and ``lmm-jax example``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import pandas as pd

from .errors import LMMError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmm-jax", description="Fit lme4-style linear mixed models with JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a model to a CSV file and print lme4's summary")
    f.add_argument("data", help="CSV file with a header row")
    f.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (x | g)"')
    f.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    f.add_argument("--json", metavar="OUT", help="also write the estimates as JSON to OUT")
    e = sub.add_parser("example", help="fit the bundled sleepstudy example and print its summary")
    e.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    return p


def result_to_dict(fit) -> dict:
    """The main estimates of a fit as plain JSON-able values."""
    return {
        "formula": fit.model.formula, "reml": fit.reml, "nobs": fit.nobs, "converged": fit.converged,
        "singular": fit.singular, "loglik": fit.loglik, "objective": fit.objective, "aic": fit.aic,
        "bic": fit.bic, "sigma": fit.sigma, "theta": fit.theta.tolist(),
        "fixef": fit.coef_table.reset_index(names="term").to_dict(orient="records"),
        "varcorr": fit.varcorr.to_dict(orient="records"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    from . import LMM, datasets

    args = _build_parser().parse_args(argv)
    try:
        if args.command == "example":
            data, formula = datasets.load("sleepstudy"), "Reaction ~ Days + (Days | Subject)"
            print(f"lmm_jax example: {formula} on the bundled sleepstudy data\n")
        else:
            try:
                data = pd.read_csv(args.data)
            except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
                print(f"lmm-jax: cannot read {args.data!r} as CSV: {e}", file=sys.stderr)
                return 2
            formula = args.formula
        t0 = time.perf_counter()
        result = LMM(formula, data).fit(reml=not args.ml)
        elapsed = time.perf_counter() - t0
    except LMMError as e:
        print(f"lmm-jax: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"\n(fitted in {elapsed:.2f} s, including JAX compilation; {result.iterations} Newton iterations)")
    if getattr(args, "json", None):
        with open(args.json, "w") as fh:
            json.dump(result_to_dict(result), fh, indent=1, default=float)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
