"""Paired difference of two runs' AUC on the same rows, with a (group) bootstrap SE.

Two runs scored on the same rows have correlated AUCs, so the SE of their difference is far below
each AUC's own. This resamples whole groups and scores both runs on each resample. Three kinds of
rows (a blend folder of ``blend_runs.py`` has the ``oof`` and ``test`` files of a run):

- ``fold`` (default): one fold's validation rows (``<run>/fold<K>/val_preds.csv`` logits), for two
  settings tried on one fold (``finetune.run_folds=[K]``);
- ``oof``: the finished runs' out-of-fold rows (``oof.csv``, calibrated ``prob``);
- ``test``: the finished runs' ``test_probs.csv`` against ``<dataset>/test_solution.csv``.

Rows are taken as the pipeline's AUCs take them: self-made fakes left out unless the dataset's own
rows hold one class (``trained.reference_mask``). Each row's group: the dataset's labels CSV column
``--group-column`` where ``--dataset`` is given and names one for it (the labels are checked against
the runs'), else (fold and oof rows) run A's or run B's ``folds.csv`` group, else the row alone; the
printout counts each source, so rows resampled alone by mistake show.

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
    """One run's rows: Id, score, made_by (and target where the file has it)."""
    name, column = {"fold": (f"fold{fold}/val_preds.csv", "logit"), "oof": ("oof.csv", "prob"),
                    "test": ("test_probs.csv", "prob")}[rows]
    frame = pd.read_csv(run / name, dtype={"Id": str}, keep_default_na=False)
    frame["made_by"] = frame["made_by"].astype(str) if "made_by" in frame.columns else ""
    keep = ["Id", "target", column, "made_by"] if "target" in frame.columns else ["Id", column, "made_by"]
    return frame[keep].rename(columns={column: "score"})


def _dataset_labels(dataset: Path, split: str, group_column: str) -> pd.DataFrame:
    """Id, target (and group) of the dataset's ``<split>_solution.csv``, read as the pipeline reads it
    (an Id's file extension, image or audio, stripped)."""
    from deepfake_pipeline.dataset import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, read_labels

    path, extensions = dataset / f"{split}_solution.csv", IMAGE_EXTENSIONS | AUDIO_EXTENSIONS
    frame, errors = read_labels(path, group_column, extensions)
    if any("group column" in e for e in errors):  # no group column: the rows are grouped otherwise
        frame, errors = read_labels(path, None, extensions)
    if errors:
        raise ValueError("; ".join(errors[:3]))
    return frame


def paired_rows(run_a: Path, run_b: Path, fold: int = 0, rows: str = "fold", dataset: Path | None = None,
                group_column: str = "group") -> pd.DataFrame:
    """The rows both runs scored, as the pipeline's AUCs take them (self-made fakes left out unless the
    dataset's own rows hold one class, ``trained.reference_mask``): Id, target, score_a, score_b, group.
    ``attrs["groups_from"]`` counts where the rows' groups came from."""
    from deepfake_pipeline.trained import reference_mask

    if rows not in ROWS:
        raise ValueError(f"rows: one of {ROWS}, not {rows!r}")
    if rows == "test" and dataset is None:
        raise ValueError("test rows need --dataset (its test_solution.csv holds the targets)")
    a, b = _scored(run_a, rows, fold), _scored(run_b, rows, fold)
    split = "test" if rows == "test" else "train"
    labels = None if dataset is None else _dataset_labels(dataset, split, group_column)
    where = f"fold {fold}" if rows == "fold" else f"{rows} rows"
    table = a.merge(b, on="Id", suffixes=("_a", "_b"))
    if len(table) != len(a) or len(table) != len(b):
        raise ValueError(f"{where}: the two runs did not score the same rows ({len(a)} and {len(b)}, "
                         f"{len(table)} in common)")
    if (table["made_by_a"] != table["made_by_b"]).any():
        raise ValueError(f"{where}: the two runs disagree on which rows are self-made fakes")
    table = table.rename(columns={"made_by_a": "made_by"}).drop(columns="made_by_b")
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
            table = table.merge(labels.rename(columns={"target": "dataset_target"}), on="Id", how="left")
            differ = table["dataset_target"].notna() & (table["dataset_target"] != table["target"])
            if differ.any():
                raise ValueError(f"{where}: Id {table.loc[differ, 'Id'].iloc[0]!r} has another label in "
                                 f"{dataset}/{split}_solution.csv than in the runs: another dataset?")
    table = table[reference_mask(table)].reset_index(drop=True)
    table["group"], counts = _groups(table, [run_a, run_b] if rows != "test" else [])
    table.attrs["groups_from"] = counts
    return table[["Id", "target", "score_a", "score_b", "group"]]


def _groups(table: pd.DataFrame, runs: list[Path]) -> tuple[pd.Series, dict[str, int]]:
    """Each row's resampling group: the dataset's, else the first run's ``folds.csv`` that names one
    (labelled rows), else the row itself; and how many rows took each source."""
    group = pd.Series("", index=table.index, dtype=object)
    counts: dict[str, int] = {}
    if "group" in table.columns:
        group = table["group"].fillna("").astype(str)
        counts["dataset"] = int((group != "").sum())
    for run in runs:
        if not (run / "folds.csv").is_file():
            continue
        folds = pd.read_csv(run / "folds.csv", dtype={"Id": str, "group": str}, keep_default_na=False)
        if "group" not in folds.columns:
            continue
        if "is_pseudo" in folds.columns:  # labelled rows only: a pseudo-labelled Id may repeat across folds
            folds = folds[folds["is_pseudo"] == 0]
        fill = (group == "") & table["Id"].isin(folds["Id"])
        group[fill] = table.loc[fill, "Id"].map(folds.set_index("Id")["group"]).fillna("")
        counts[f"{run.name}/folds.csv"] = int((fill & (group != "")).sum())
    counts["alone"] = int((group == "").sum())
    return ("row:" + table["Id"]).where(group == "", "group:" + group), counts


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
    sources = ", ".join(f"{n} from {k}" for k, n in rows.attrs["groups_from"].items() if n)
    print(f"{where}: {r['rows']} rows in {r['groups']} groups ({sources}); AUC A {r['auc_a']:.4f}, B {r['auc_b']:.4f}; "
          f"B - A {r['diff']:+.4f} (group bootstrap SE {r['se']:.4f}; B above A in {r['share_above_0']:.1%} "
          "of resamples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
