#!/usr/bin/env python
"""Blend finished runs (other backbones, seeds or self-made fakes) into one submission.

    python blend_runs.py --runs weights/lite2 weights/lite0 --out weights/blend
    python blend_runs.py --runs weights/a weights/b --weights 2 1 --out weights/blend
The runs' calibrated test and out-of-fold probabilities are averaged as log-odds; the threshold is chosen
on the blended OOF by the runs' own rule. weights/blend gets oof.csv, threshold.json, test_probs.csv,
submission.csv and blend.json (each run's OOF AUC beside the blend's).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deepfake_pipeline.cli import run_main, setup_logging


def _fpr(value: str) -> float | None:
    if value.lower() == "none":
        return None
    share = float(value)
    if not 0.0 <= share < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"a share in [0, 1) or none, not {value}")
    return share


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished run folders (predict done), two or more")
    parser.add_argument("--out", required=True, help="folder for the blend's files, e.g. weights/blend")
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per run (default: equal)")
    parser.add_argument("--max-real-fpr", type=_fpr, default=argparse.SUPPRESS, metavar="SHARE|none",
                        help="the threshold's cap on OOF real items called fake (default: the runs' own rule)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    from deepfake_pipeline.blend import blend_runs

    rule = {"max_real_fpr": args.max_real_fpr} if "max_real_fpr" in args else {}
    summary = blend_runs(args.runs, args.out, args.weights, **rule)
    logging.getLogger("deepfake_pipeline").debug("blend summary: %s", summary)
    return 0


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
