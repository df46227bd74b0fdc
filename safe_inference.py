#!/usr/bin/env python
"""The fallback that always answers: a complete submission from whatever a run has.

Examples:
    python safe_inference.py --run weights/default                      # -> weights/default/safe_submission.csv
    python safe_inference.py --run weights/default --device cpu --fast --out submission.csv
    python safe_inference.py --run weights/default --input photos/      # "does this photo look fake?"
Any finished subset of folds; out of memory halves the batch; test images without an aligned face are aligned on
the fly; an image that cannot be read gets the training prior's class (listed in problems.csv beside the output).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from deepfake_pipeline.cli import base_parser, run_main, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    for action in parser._actions:  # --config defaults to the run's own saved config
        if action.dest == "config":
            action.default, action.help = None, "YAML config (default: the run's saved config.yaml)"
    parser.add_argument("--run", required=True, help="run directory, e.g. weights/default")
    parser.add_argument("--out", help="submission CSV (default: <run>/safe_submission.csv); with --input: a CSV "
                                      "of the answers (default: printed only)")
    parser.add_argument("--device", help="cpu | cuda | auto (default: the config's run.device)")
    parser.add_argument("--fast", action="store_true", help="no test-time augmentation (one view)")
    parser.add_argument("--input", type=Path, help="one image or a folder of photos to judge instead of the test set")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    from deepfake_pipeline.artifacts import RunPaths
    from deepfake_pipeline.fallback import inspect_images, iter_lines, list_inputs, safe_inference
    from deepfake_pipeline.images import save_csv
    from deepfake_pipeline.trained import inference_runtime, load_run_config

    cfg = load_run_config(args.run, args.overrides, args.config)
    paths = RunPaths(Path(args.run))
    runtime = inference_runtime(args.device or cfg.run.device, cfg.run.amp, cfg.run.channels_last)
    if args.input is not None:
        frame = inspect_images(cfg, paths, runtime, list_inputs(args.input), fast=args.fast)
        for line in iter_lines(frame):
            print(line)
        if args.out:
            save_csv(args.out, frame)
        return 0
    out = Path(args.out) if args.out else paths.root / "safe_submission.csv"
    result = safe_inference(cfg, paths, runtime, out, fast=args.fast)
    print(result.line(), flush=True)
    return 0


def entry() -> int:
    """The installed command (pyproject [project.scripts]): errors as one line and exit code 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
