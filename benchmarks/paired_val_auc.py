"""Paired difference of two runs' validation AUC on the same fold, with a group bootstrap SE.

Two settings tried on one fold (``finetune.run_folds=[K]``) score the same validation rows; their
AUCs are correlated, so the SE of the difference is much smaller than each AUC's own. This resamples
whole groups (``folds.csv``'s ``group`` column where the run has one, else single rows) and scores
both runs' ``val_preds.csv`` logits on each resample.

    python benchmarks/paired_val_auc.py RUN_A RUN_B [--fold 0] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def paired_rows(run_a: Path, run_b: Path, fold: int) -> pd.DataFrame:
    """The fold's validation rows scored by both runs: target, logit_a, logit_b, group."""
    def scored(run: Path) -> pd.DataFrame:
        preds = pd.read_csv(run / f"fold{fold}" / "val_preds.csv", dtype={"Id": str}, keep_default_na=False)
        if "made_by" in preds.columns:  # as the pipeline's val_auc: real items only, no self-made fakes
            preds = preds[preds["made_by"] == ""]
        return preds[["Id", "target", "logit"]]

    a, b = scored(run_a), scored(run_b)
    rows = a.merge(b, on="Id", suffixes=("_a", "_b"))
    if len(rows) != len(a) or len(rows) != len(b) or (rows["target_a"] != rows["target_b"]).any():
        raise ValueError(f"fold {fold}: the two runs did not validate on the same rows with the same labels")
    folds = pd.read_csv(run_a / "folds.csv", dtype={"Id": str, "group": str}, keep_default_na=False)
    rows["group"] = rows["Id"]
    if "group" in folds.columns:  # labelled rows only: a pseudo-labelled Id may repeat across folds
        groups = folds[folds["is_pseudo"] == 0].set_index("Id")["group"] if "is_pseudo" in folds else (
            folds.set_index("Id")["group"])
        named = rows["Id"].map(groups).fillna("")
        rows["group"] = rows["group"].where(named == "", "group:" + named)
    return rows.rename(columns={"target_a": "target"}).drop(columns="target_b")


def paired_difference(rows: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUC of each run, B - A, the group-bootstrap SE of B - A and the share of resamples where B > A.

    The SE is validation-sample noise only: training the same setting again with another ``run.seed``
    moves a fold's AUC too (compare A with A at another seed for that floor)."""
    y = rows["target"].to_numpy()
    a, b = rows["logit_a"].to_numpy(), rows["logit_b"].to_numpy()
    codes, _ = pd.factorize(rows["group"])
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if len(np.unique(y[pick])) == 2:
            diffs.append(roc_auc_score(y[pick], b[pick]) - roc_auc_score(y[pick], a[pick]))
    d = np.asarray(diffs)
    if len(d) < max(2, resamples // 2):
        raise ValueError(f"only {len(d)} of {resamples} resamples held both classes: too few groups to bootstrap")
    auc_a, auc_b = roc_auc_score(y, a), roc_auc_score(y, b)
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": auc_b - auc_a, "se": float(d.std(ddof=1)),
            "share_above_0": float((d > 0).mean()), "groups": len(members), "rows": len(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--resamples", type=int, default=1000)
    args = p.parse_args(argv)
    r = paired_difference(paired_rows(args.run_a, args.run_b, args.fold), args.resamples)
    print(f"fold {args.fold}: {r['rows']} rows in {r['groups']} groups; AUC A {r['auc_a']:.4f}, B {r['auc_b']:.4f}; "
          f"B - A {r['diff']:+.4f} (group bootstrap SE {r['se']:.4f}; B above A in {r['share_above_0']:.1%} "
          "of resamples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
