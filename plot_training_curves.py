"""Training curves and OOF diagnostics of a run -> <run>/plots/*.png + report.html.

Examples:
    python plot_training_curves.py --run weights/default
    python plot_training_curves.py --config configs/demo.yaml      # the run dir from the config
Works on a partial run (SSL only, some folds): draws what exists, the report lists what is missing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from deepfake_pipeline.cli import base_parser, config_from_args, run_main, setup_logging

log = logging.getLogger("deepfake_pipeline")


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory (weights/<run>); default: run.dir of --config")
    parser.add_argument("--out", help="output folder (default: <run>/plots)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    run_dir = args.run or config_from_args(args).run.dir

    from deepfake_pipeline.plots import make_plots

    result = make_plots(run_dir, args.out)
    for item in result.missing:
        log.info("missing: %s", item)
    log.info(result.summary())
    return 0


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
