"""How much the in-sample calibration flattered a run's out-of-fold figures, and what the fold ensemble
does to the OOF threshold's labels on the test set.

For each finished run directory (``train.py`` or ``quality.py`` output) it recomputes, from the raw
validation logits in ``fold<k>/val_preds.csv`` and the groups in ``folds.csv``, the OOF figures two
ways: with each fold's Platt calibration fitted on the very rows it scores (*in-sample*, the rule
before 2026-12-05) and cross-fitted as ``trained.calibrate_fold`` now does (``trained.crossfit_logodds``,
the same parts and seed). Runs made by older code are read the same way, nothing is retrained.

With ``--test`` the run's fold models also predict its test inputs (the run's stage-1 images, the
predict stage's code): the share each fold alone calls fake at the cross-fitted threshold beside the
ensemble's (label-free, ``predict.fold_agreement``), and, from the test labels, F1 at each threshold
for every fold alone and for the ensemble. Those test figures are measurements, not choices.

    python benchmarks/oof_honesty.py /tmp/quality/runs/rfff-cpu /tmp/quality/runs/lfw-cpu --test
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

from deepfake_pipeline.artifacts import RunPaths, load_faces, per_id, usable_faces  # noqa: E402
from deepfake_pipeline.metrics import auc_standard_error, binary_metrics  # noqa: E402
from deepfake_pipeline.trained import (  # noqa: E402
    crossfit_logodds,
    finished_folds,
    fit_platt,
    load_run_config,
    oof_figures,
    sigmoid,
)


def recompute_oof(run: Path) -> pd.DataFrame:
    """oof.csv's rows as the current code makes them (``prob`` cross-fitted, ``prob_insample``), from
    the run's raw validation logits."""
    cfg = load_run_config(run)
    paths = RunPaths(run)
    folds = pd.read_csv(paths.folds_csv, dtype={"Id": str})
    group = folds.set_index("Id")["group"].astype(str) if "group" in folds.columns else None
    parts = []
    for k in range(cfg.finetune.folds):
        preds = pd.read_csv(paths.fold(k) / "val_preds.csv", dtype={"Id": str})
        logits, targets = preds["logit"].to_numpy(), preds["target"].to_numpy().astype(int)
        groups = group.loc[preds["Id"]].to_numpy() if group is not None else None
        parts.append(preds.assign(
            prob=sigmoid(crossfit_logodds(logits, targets, groups, seed=cfg.run.seed + k)),
            prob_insample=sigmoid(fit_platt(logits, targets)(logits))))
    return pd.concat(parts, ignore_index=True)


def test_figures(run: Path, threshold: float, threshold_insample: float) -> dict[str, object]:
    """Per-fold and ensemble calibrated test log-odds (the predict stage's code): label-free agreement
    and, from ``test_solution.csv`` under the run's data root, F1 at both thresholds."""
    from deepfake_pipeline.predict import fold_agreement
    from deepfake_pipeline.trained import ensemble_logits, inference_runtime

    cfg = load_run_config(run)
    paths = RunPaths(run)
    folds = finished_folds(paths, cfg.finetune.folds)
    faces = usable_faces(load_faces(cfg), "test")
    matrix = ensemble_logits(cfg, paths, inference_runtime("cpu"), folds, list(faces["path"]), per_fold=True)
    ids = per_id(faces["Id"], np.zeros(len(faces)))[0]
    matrix = np.stack([per_id(faces["Id"], row)[1] for row in matrix])
    truth = pd.read_csv(Path(cfg.data.root) / "test_solution.csv", dtype={"Id": str}).set_index("Id")
    y = truth.loc[ids, "target_feature"].to_numpy().astype(int)
    out: dict[str, object] = {"agreement": fold_agreement(matrix, threshold)}
    for name, t in (("crossfit", threshold), ("insample", threshold_insample)):
        singles = [binary_metrics(y, sigmoid(row), threshold=t)["f1"] for row in matrix]
        ens = binary_metrics(y, sigmoid(matrix.mean(axis=0)), threshold=t)
        out[name] = {"fold_f1": singles, "ensemble_f1": ens["f1"], "ensemble_auc": ens["auc"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    p.add_argument("--test", action="store_true", help="also predict each run's test inputs (fold vs ensemble)")
    args = p.parse_args(argv)
    print("| run | n | OOF AUC in-sample | OOF AUC cross-fitted | F1 in-sample (its threshold) | F1 cross-fitted "
          "(its threshold) | F1, threshold from the other folds | log-loss in-sample / cross-fitted | "
          "threshold in-sample / cross-fitted |")
    print("|---|---|---|---|---|---|---|---|---|")
    tests = {}
    for run in args.runs:
        oof = recompute_oof(run)
        fig = oof_figures(oof)
        ins = fig["insample"]
        n_pos, n_neg = int(oof["target"].sum()), int((oof["target"] == 0).sum())

        def auc(value: float, n_pos: int = n_pos, n_neg: int = n_neg) -> str:
            return f"{value:.4f} ± {auc_standard_error(value, n_pos, n_neg):.4f}"

        print(f"| {run.name} | {len(oof)} | {auc(ins['oof_auc'])} | {auc(fig['oof_auc'])} | {ins['oof_f1']:.4f} | "
              f"{fig['oof_f1']:.4f} | {fig['oof_f1_heldout']:.4f} | {ins['oof_logloss']:.4f} / "
              f"{fig['oof_logloss']:.4f} | {ins['threshold']:.4f} / {fig['threshold']:.4f} |", flush=True)
        if args.test:
            tests[run.name] = test_figures(run, fig["threshold"], ins["threshold"])
    if tests:
        print("\n| run | test n | fake share: each fold alone / ensemble | labels against the folds' majority | "
              "folds disagree | test F1 at the cross-fitted threshold: folds / ensemble | the same at the "
              "in-sample threshold | ensemble test AUC |")
        print("|---|---|---|---|---|---|---|---|")
        for name, t in tests.items():
            a = t["agreement"]
            shares = " / ".join(f"{v:.3f}" for v in a["fold_fake_share"])
            cf, ins = t["crossfit"], t["insample"]
            print(f"| {name} | {a['n']} | {shares} / **{a['ensemble_fake_share']:.3f}** | "
                  f"{a['ensemble_against_majority']} | {a['folds_disagree']:.3f} | "
                  f"{' / '.join(f'{v:.3f}' for v in cf['fold_f1'])} / **{cf['ensemble_f1']:.3f}** | "
                  f"{' / '.join(f'{v:.3f}' for v in ins['fold_f1'])} / **{ins['ensemble_f1']:.3f}** | "
                  f"{cf['ensemble_auc']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
