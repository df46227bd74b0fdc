"""What every command-line entry point shares: --config/--set/--force, logging, error exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .config import Config, load_config
from .errors import PipelineError

log = logging.getLogger("deepfake_pipeline")

EXIT_USER_ERROR = 2


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set finetune.epochs=3 (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="redo work even when outputs are up to date")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def setup_logging(level: str = "INFO") -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    logging.basicConfig(
        level=getattr(logging, level), format=f"%(asctime)s {prefix}%(levelname)s %(message)s", datefmt="%H:%M:%S",
        force=True,
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main``; a PipelineError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
