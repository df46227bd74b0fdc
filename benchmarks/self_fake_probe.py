"""Which self-made fakes teach what real fakes look like? A linear probe on the training split only.

For a stage-1 manifest made with ``audio.self_fakes`` (every method of interest), each window becomes
its rows' mean and standard deviation over time of one channel (``audio_probe.row_statistics``). In
speaker-grouped folds of the *training* split, a logistic regression learns real clips against the
self-made fakes of one method (or of all), never a real fake; it then scores the held-out speakers'
real clips against their real fakes, per generator (clip AUC: the mean of a clip's window logits).
The reference row learns from the real fakes themselves. The test split is never read: this is for
choosing ``audio.self_fakes`` before a whole run.

    python benchmarks/self_fake_probe.py /tmp/quality/yourtts_made/faces.csv ../shared/datasets/yourtts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audio_probe import row_statistics  # noqa: E402


def clip_scores(ids: np.ndarray, logits: np.ndarray) -> pd.Series:
    return pd.Series(logits).groupby(ids).mean()


def run(manifest: pd.DataFrame, meta: pd.DataFrame, channel: int, folds: int,
        combos: list[list[str]] | None = None) -> pd.DataFrame:
    windows = manifest[(manifest["split"] == "train") & (manifest["status"] == "window")].reset_index(drop=True)
    windows["made_by"] = windows["made_by"].fillna("").astype(str)
    source = np.where(windows["made_by"] != "", windows["made_from"], windows["Id"])
    info = meta.set_index("Id")
    windows["speaker"] = info.loc[source, "speaker"].astype(str).to_numpy()
    windows["generator"] = np.where(windows["made_by"] != "", "made-" + windows["made_by"],
                                    info.loc[source, "generator"].to_numpy())
    x = row_statistics(list(windows["path"]), channel)
    generators = sorted(g for g in windows["generator"].unique() if g != "real" and not g.startswith("made-"))
    methods = sorted(g for g in windows["generator"].unique() if g.startswith("made-"))
    trainings = {"real fakes (reference)": generators, "all self-made": methods, **{m: [m] for m in methods},
                 **{"+".join(c): [f"made-{m}" for m in c] for c in combos or []}}
    speakers = windows["speaker"].to_numpy()
    results = []
    for name, fake_kinds in trainings.items():
        scores = []
        for fit_idx, eval_idx in GroupKFold(n_splits=folds).split(x, groups=speakers):
            fit = windows.iloc[fit_idx]
            use = fit["generator"].isin(["real", *fake_kinds]).to_numpy()
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
            model.fit(x[fit_idx][use], (fit["generator"][use] != "real").to_numpy().astype(int))
            held = windows.iloc[eval_idx]
            keep = (held["made_by"] == "").to_numpy()  # score the dataset's own clips only
            logits = model.decision_function(x[eval_idx][keep])
            per_clip = clip_scores(held["Id"].to_numpy()[keep], logits)
            scores.append(per_clip)
        per_clip = pd.concat(scores)
        gen = info.loc[per_clip.index, "generator"]
        row = {"trained on": name}
        real = per_clip[gen == "real"].to_numpy()
        for g in [*generators, "all"]:
            fake = per_clip[(gen != "real") if g == "all" else (gen == g)].to_numpy()
            row[g] = roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[real, fake])
        results.append(row)
    return pd.DataFrame(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="stage 1's faces.csv, made with audio.self_fakes")
    p.add_argument("dataset", type=Path, help="the speech set (its meta.csv: Id, speaker, generator)")
    p.add_argument("--channel", type=int, default=0, help="image channel (default 0)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--combo", action="append", default=[], metavar="M1,M2", help="also train on these methods together")
    args = p.parse_args(argv)
    manifest = pd.read_csv(args.manifest, dtype={"Id": str, "made_from": str}, keep_default_na=False)
    meta = pd.read_csv(args.dataset / "meta.csv", dtype={"Id": str})
    table = run(manifest, meta, args.channel, args.folds, [c.split(",") for c in args.combo])
    columns = list(table.columns)
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(v if isinstance(v, str) else f"{v:.3f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
