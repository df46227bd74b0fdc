"""Stage 1: detect and crop one face per image -> <align.out>/{train,test}/<Id>.jpg + faces.csv.

Examples:
    python align_faces.py --config configs/default.yaml
    python align_faces.py --config configs/default.yaml --shard 0/2   # and --shard 1/2 elsewhere
    torchrun --nproc_per_node 4 align_faces.py --config configs/default.yaml
    python align_faces.py --config configs/default.yaml --merge-only
Rerunning resumes; --force redoes everything of the chosen split(s) and shard.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deepfake_pipeline.align import run_align
from deepfake_pipeline.cli import base_parser, config_from_args, run_main, setup_logging
from deepfake_pipeline.journal import parse_shard, shard_from_env


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["train", "test", "all"], default="all")
    parser.add_argument(
        "--shard", metavar="I/N", help="process keys[I::N] only (default: RANK/WORLD_SIZE, else 0/1)"
    )
    parser.add_argument("--merge-only", action="store_true", help="only rebuild faces.csv from the journals")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    shard = parse_shard(args.shard) if args.shard else shard_from_env()
    run_align(cfg, args.split, shard, force=args.force, merge_only=args.merge_only)
    return 0


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
