"""The decision threshold's rule (``finetune.max_real_fpr``) on finished runs, nothing retrained.

For each run directory (``train.py`` or ``quality.py`` output) and each cap, from the run's ``oof.csv``:
the threshold :func:`deepfake_pipeline.trained.oof_figures` chooses, the out-of-fold F1 with each fold's
threshold chosen on the other folds (``oof_f1_heldout``: what the rule costs where the test set is like
training) and the share of real OOF items called fake. Then, from the run's ``test_probs.csv`` and the
answer key (``test_solution.csv``, ``target_feature``): the share of the test set called fake beside the
true share, F1, and the real and fake items called fake. On a leave-one-generator-out layout those test
figures say whether the threshold carries to a generator training never saw. They are measurements,
not choices: choose the cap on out-of-fold figures and protocols other than the one reported.

    python benchmarks/threshold_rules.py /tmp/quality/runs/selfmade-hifigan16-f3e3 \\
        --solution /tmp/logo/yourtts-selfmade/test_solution.csv --caps none 0.1 0.05 0.01
    python benchmarks/threshold_rules.py /tmp/quality/runs/glow-f3e3 /tmp/quality/runs/glow-f3e3 \\
        --probs /tmp/quality/runs/glow-f3e3/test_probs.csv \\
        --probs /tmp/quality/runs/glow-f3e3/cross-yourtts-phone/test_probs.csv \\
        --solution /tmp/logo/yourtts-yourtts2glow/test_solution.csv --solution /tmp/logo/yourtts-phone/test_solution.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deepfake_pipeline.metrics import label_metrics  # noqa: E402
from deepfake_pipeline.trained import oof_figures  # noqa: E402


def _cap(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def rule_rows(run: Path, solution: Path | None, caps: list[float | None], probs: Path | None = None
              ) -> list[dict[str, object]]:
    """One row per cap: the OOF figures, and the test figures where ``solution`` is given (of ``probs``,
    default the run's ``test_probs.csv``; e.g. a quality.py cross set's)."""
    oof = pd.read_csv(run / "oof.csv", dtype={"Id": str})
    test = None
    if solution is not None:
        probs_csv = probs or run / "test_probs.csv"
        scores = pd.read_csv(probs_csv, dtype={"Id": str}).set_index("Id")["prob"]
        key = pd.read_csv(solution, dtype={"Id": str}).set_index("Id")["target_feature"]
        if not key.index.isin(scores.index).all():
            raise SystemExit(f"{probs_csv} lacks {int((~key.index.isin(scores.index)).sum())} Id(s) of {solution}")
        test = (key.to_numpy().astype(int), scores.loc[key.index].to_numpy())
    rows = []
    for cap in caps:
        fig = oof_figures(oof, cap)
        name = run.name if probs is None or probs.parent == run else f"{run.name}: {probs.parent.name}"
        row: dict[str, object] = {"run": name, "cap": "none" if cap is None else f"{cap:g}",
                                  "threshold": fig["threshold"], "oof_f1_heldout": fig["oof_f1_heldout"],
                                  "oof_real_fpr": fig["oof_real_fpr"]}
        if test is not None:
            y, p = test
            called = (p >= fig["threshold"]).astype(int)
            row |= {"test_called": called.mean(), "test_true_share": y.mean(), "test_f1": label_metrics(y, called)["f1"],
                    "test_real_called": called[y == 0].mean() if (y == 0).any() else np.nan,
                    "test_fake_called": called[y == 1].mean() if (y == 1).any() else np.nan}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--solution", type=Path, action="append",
                        help="the answer key of each run's test set, in the order of the runs (or one for all)")
    parser.add_argument("--probs", type=Path, action="append",
                        help="test_probs.csv to score in place of each run's own, in the order of the runs")
    parser.add_argument("--caps", nargs="+", type=_cap, default=[None, 0.1, 0.05, 0.01],
                        help="finetune.max_real_fpr values; none = the F1 threshold alone")
    args = parser.parse_args(argv)
    solutions, probs = args.solution or [None], args.probs or [None] * len(args.runs)
    if len(solutions) not in (1, len(args.runs)) or len(probs) != len(args.runs):
        parser.error("give one --solution, or one per run; --probs one per run")
    rows = []
    for i, run in enumerate(args.runs):
        rows += rule_rows(run, solutions[i if len(solutions) > 1 else 0], args.caps, probs[i])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
