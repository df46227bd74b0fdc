#!/usr/bin/env python
"""Mine pseudo labels ("diamonds"): an earlier run's fold models label the test faces they are sure of.

Examples:
    python make_diamonds.py --run weights/default
    python make_diamonds.py --run weights/default --set diamonds.max_fraction=0.2 --set diamonds.balance=true
    python train.py --config configs/default.yaml --set run.name=round2 --set data.pseudo_labels=data/train_diamond.csv
The run's models and TTA come from weights/<run>/config.yaml; thresholds and caps from the diamonds section of
--config (default: that same saved config) and --set.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deepfake_pipeline.cli import base_parser, run_main, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    for action in parser._actions:  # --config defaults to the run's own saved config
        if action.dest == "config":
            action.default, action.help = None, "YAML config (default: the run's saved config.yaml)"
    parser.add_argument("--run", required=True, help="run directory of the earlier round, e.g. weights/default")
    parser.add_argument("--out", default="data/train_diamond.csv", help="diamonds CSV (default: %(default)s)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="write the CSV even when no test face passes the thresholds (default: exit code 2)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    from deepfake_pipeline.diamonds import run_diamonds

    summary = run_diamonds(args.run, args.config, args.overrides, args.out, args.allow_empty)
    print(summary.line(), flush=True)
    return 0


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
