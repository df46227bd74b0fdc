#!/usr/bin/env python
"""Train and predict: SSL pretraining, k-fold fine-tuning, TTA prediction (resumable stages).

    python train.py --config configs/default.yaml --stage all
    torchrun --nproc_per_node 8 train.py --config configs/default.yaml --stage ssl
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deepfake_pipeline.cli import base_parser, config_from_args, run_main, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=["ssl", "finetune", "predict", "all"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)

    from deepfake_pipeline.stages import run_stages

    return run_stages(cfg, args.stage, force=args.force)


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
