"""Paired difference of two runs' AUC on the same rows, with a (group) bootstrap SE.

Two runs scored on the same rows have correlated AUCs, so the SE of their difference is far below
each AUC's own. This resamples whole groups and scores both runs on each resample. Three kinds of
rows (a blend folder of ``blend_runs.py`` has the ``oof`` and ``test`` files of a run):

- ``fold`` (default): one fold's validation rows (``<run>/fold<K>/val_preds.csv`` logits), for two
  settings tried on one fold (``finetune.run_folds=[K]``);
- ``oof``: the finished runs' out-of-fold rows (``oof.csv``, calibrated ``prob``; self-made fakes left
  out, as the pipeline's OOF AUC leaves them);
- ``test``: the finished runs' ``test_probs.csv`` against ``<dataset>/test_solution.csv``.

Groups: the dataset's labels CSV column ``--group-column`` where ``--dataset`` is given and has it,
else (fold and oof rows) run A's ``folds.csv`` ``group``, else each row alone.

    python benchmarks/paired_auc.py RUN_A RUN_B [--fold 0] [--resamples 1000]
    python benchmarks/paired_auc.py RUN_A BLEND --rows oof --dataset ../shared/datasets/dfdc_faces
    python benchmarks/paired_auc.py RUN_A BLEND --rows test --dataset ../shared/datasets/dfdc_faces
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the pipeline's label reader
    sys.path.insert(0, str(REPO))

ROWS = ("fold", "oof", "test")


def _scored(run: Path, rows: str, fold: int) -> pd.DataFrame:
    """One run's rows: Id, score (and target where the file has it)."""
    if rows == "fold":
        frame = pd.read_csv(run / f"fold{fold}" / "val_preds.csv", dtype={"Id": str}, keep_default_na=False)
        column = "logit"
    elif rows == "oof":
        frame = pd.read_csv(run / "oof.csv", dtype={"Id": str}, keep_default_na=False)
        column = "prob"
    else:
        frame = pd.read_csv(run / "test_probs.csv", dtype={"Id": str}, keep_default_na=False)
        column = "prob"
    if "made_by" in frame.columns:  # as the pipeline's AUCs: real items only, no self-made fakes
        frame = frame[frame["made_by"] == ""]
    keep = ["Id", "target", column] if "target" in frame.columns else ["Id", column]
    return frame[keep].rename(columns={column: "score"})


def _dataset_labels(dataset: Path, split: str, group_column: str) -> pd.DataFrame:
    """Id, target (and group) of the dataset's ``<split>_solution.csv``, read as the pipeline reads it."""
    from deepfake_pipeline.dataset import read_labels

    frame, errors = read_labels(dataset / f"{split}_solution.csv", group_column)
    missing = [e for e in errors if "group column" in e]
    if missing:  # no group column: each row is its own group
        frame, errors = read_labels(dataset / f"{split}_solution.csv")
    if errors:
        raise ValueError("; ".join(errors[:3]))
    return frame


def paired_rows(run_a: Path, run_b: Path, fold: int = 0, rows: str = "fold", dataset: Path | None = None,
                group_column: str = "group") -> pd.DataFrame:
    """The rows both runs scored: Id, target, score_a, score_b, group."""
    if rows not in ROWS:
        raise ValueError(f"rows: one of {ROWS}, not {rows!r}")
    if rows == "test" and dataset is None:
        raise ValueError("test rows need --dataset (its test_solution.csv holds the targets)")
    a, b = _scored(run_a, rows, fold), _scored(run_b, rows, fold)
    labels = None if dataset is None else _dataset_labels(dataset, "test" if rows == "test" else "train",
                                                           group_column)
    where = f"fold {fold}" if rows == "fold" else f"{rows} rows"
    table = a.merge(b, on="Id", suffixes=("_a", "_b"))
    if len(table) != len(a) or len(table) != len(b):
        raise ValueError(f"{where}: the two runs did not score the same rows ({len(a)} and {len(b)}, "
                         f"{len(table)} in common)")
    if rows == "test":
        known = table.merge(labels, on="Id", how="inner")
        if len(known) != len(table):
            raise ValueError(f"{where}: {len(table) - len(known)} scored Id(s) are not in {dataset}/test_solution.csv")
        table = known
    else:
        if (table["target_a"] != table["target_b"]).any():
            raise ValueError(f"{where}: the two runs did not score the same rows with the same labels")
        table = table.rename(columns={"target_a": "target"}).drop(columns="target_b")
        if labels is not None:
            table = table.merge(labels.drop(columns="target"), on="Id", how="left")
    table["group"] = _groups(table, run_a, rows)
    return table[["Id", "target", "score_a", "score_b", "group"]]


def _groups(table: pd.DataFrame, run_a: Path, rows: str) -> pd.Series:
    """Each row's resampling group: the dataset's, else run A's folds.csv's, else the row itself."""
    own = "row:" + table["Id"]
    if "group" in table.columns:
        named = table["group"].fillna("").astype(str)
    elif rows != "test" and (run_a / "folds.csv").is_file():
        folds = pd.read_csv(run_a / "folds.csv", dtype={"Id": str, "group": str}, keep_default_na=False)
        if "group" not in folds.columns:
            return own
        if "is_pseudo" in folds.columns:  # labelled rows only: a pseudo-labelled Id may repeat across folds
            folds = folds[folds["is_pseudo"] == 0]
        named = table["Id"].map(folds.set_index("Id")["group"]).fillna("")
    else:
        return own
    return own.where(named == "", "group:" + named)


def paired_difference(rows: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUC of each run, B - A, the group-bootstrap SE of B - A and the share of resamples where B > A.

    The SE is validation-sample noise only: training the same setting again with another ``run.seed``
    moves a fold's AUC too (compare A with A at another seed for that floor)."""
    y = rows["target"].to_numpy()
    a, b = rows["score_a"].to_numpy(), rows["score_b"].to_numpy()
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
    p.add_argument("--rows", choices=ROWS, default="fold", help="which rows both runs scored (default: fold)")
    p.add_argument("--fold", type=int, default=0, help="the fold of --rows fold")
    p.add_argument("--dataset", type=Path, help="the Kaggle layout: test targets, and groups from its labels CSVs")
    p.add_argument("--group-column", default="group", help="the labels CSVs' group column (default: group)")
    p.add_argument("--resamples", type=int, default=1000)
    args = p.parse_args(argv)
    rows = paired_rows(args.run_a, args.run_b, args.fold, args.rows, args.dataset, args.group_column)
    r = paired_difference(rows, args.resamples)
    where = f"fold {args.fold}" if args.rows == "fold" else f"{args.rows} rows"
    print(f"{where}: {r['rows']} rows in {r['groups']} groups; AUC A {r['auc_a']:.4f}, B {r['auc_b']:.4f}; "
          f"B - A {r['diff']:+.4f} (group bootstrap SE {r['se']:.4f}; B above A in {r['share_above_0']:.1%} "
          "of resamples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
