"""Stage 1 for speech: every clip -> spectrogram windows <audio.out>/{train,test}/<Id>_w<k>.png + faces.csv.

Examples:
    python prepare_audio.py --config speech.yaml        # any config with data.modality: audio
    python prepare_audio.py --config configs/default.yaml --set data.modality=audio --set data.root=data/speech
    python prepare_audio.py --config speech.yaml --shard 0/2   # and --shard 1/2 elsewhere
    torchrun --nproc_per_node 4 prepare_audio.py --config speech.yaml
    python prepare_audio.py --config speech.yaml --merge-only
Rerunning resumes; --force redoes everything of the chosen split(s) and shard.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deepfake_pipeline.audio_stage import run_prepare_audio
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
    run_prepare_audio(cfg, args.split, shard, force=args.force, merge_only=args.merge_only)
    return 0


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
