"""The score-shift check's reference on a finished run: all folds' OOF scores pooled, or each fold's own.

Scores a stage-1 ``faces.csv`` (its ``test`` rows) with each fold model of a finished run
(``train.py`` or ``quality.py`` output), then runs :func:`deepfake_pipeline.shift.check_score_shift`
twice on those per-fold scores: against the pooled OOF scores (the rule before 2026-12-07) and against
each fold's own (``folds``, the rule since). With the answer key it also prints the true fake share,
which the best-fitting mix estimates. A measurement, not a choice: nothing is written to the run.

    python benchmarks/shift_reference.py /tmp/quality/runs/lfw-lite2-x-dfdc \\
        /tmp/quality/faces/lfw_swap-685029a438bff4a2/faces.csv --solution ../shared/datasets/lfw_swap/test_solution.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deepfake_pipeline.artifacts import RunPaths, per_id_rows, usable_faces  # noqa: E402
from deepfake_pipeline.shift import check_score_shift  # noqa: E402
from deepfake_pipeline.trained import (  # noqa: E402
    ensemble_logits,
    finished_folds,
    inference_runtime,
    load_run_config,
    read_threshold,
    sigmoid,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder (fold models, oof.csv)")
    parser.add_argument("faces", type=Path, help="a stage-1 faces.csv whose test rows are scored")
    parser.add_argument("--solution", type=Path, help="test_solution.csv: print the true fake share")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run)
    paths = RunPaths(args.run)
    if not paths.oof_csv.is_file():
        parser.error(f"{paths.oof_csv} is missing: the run's folds were never pooled (finish its finetune stage)")
    folds = finished_folds(paths, cfg.finetune.folds)
    runtime = inference_runtime(cfg.run.device, cfg.run.amp, cfg.run.channels_last)
    faces = usable_faces(pd.read_csv(args.faces, dtype={"Id": str}, keep_default_na=False), "test")
    ids, by_fold = per_id_rows(faces["Id"], ensemble_logits(cfg, paths, runtime, folds, list(faces["path"]),
                                                            per_fold=True))
    if args.solution is not None:
        truth = pd.read_csv(args.solution, dtype={"Id": str}).set_index("Id")["target_feature"]
        print(f"{len(ids)} items, true fake share {truth.reindex(ids).mean():.3f}")
    probs = sigmoid(by_fold)
    called = float((sigmoid(by_fold.mean(axis=0)) >= read_threshold(paths)).mean())  # as predict calls them
    for name, rows in (("pooled OOF", None), ("own fold's OOF", folds)):
        result = check_score_shift(probs, paths.oof_csv, called, name, folds=rows)
        print(f"{name}: {result.as_dict() if result else 'no verdict (too few items)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
