"""Leave-one-generator-out layouts of a speech set with a ``meta.csv`` (``generator`` per clip).

Each protocol writes a Kaggle layout that ``benchmarks/quality.py`` runs like any dataset: its
training labels keep the real clips and the fakes of the training generators; its test set is the
source's test split, real clips plus the fakes of the held-out generators only. The audio files are
symlinked, never copied. Speakers stay as the source split them (speaker-disjoint).

    python benchmarks/generator_split.py ../shared/datasets/yourtts --out /tmp/logo
    python benchmarks/quality.py yourtts-selfmade --datasets /tmp/logo --config configs/audio.yaml \\
        --set "audio.self_fakes=[lpc,pvoc]"

Protocols (yourtts's generators: yourtts_tts, sc_glowtts, yourtts_vc; ``real`` for the real clips):

- ``selfmade``: no fake in training at all (the recipe's ``audio.self_fakes`` supply them); every
  fake of the test split is held out.
- ``tts2vc``: text-to-speech fakes in training (YourTTS, SC-GlowTTS), voice conversion held out.
- ``yourtts2glow``: YourTTS fakes in training (its TTS and its voice conversion), SC-GlowTTS held out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

# protocol -> (generators whose fakes train, generators whose fakes are scored)
PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "selfmade": ((), ("yourtts_tts", "sc_glowtts", "yourtts_vc")),
    "tts2vc": (("yourtts_tts", "sc_glowtts"), ("yourtts_vc",)),
    "yourtts2glow": (("yourtts_tts", "yourtts_vc"), ("sc_glowtts",)),
}


def write_layout(source: Path, out: Path, train_generators: tuple[str, ...], test_generators: tuple[str, ...]
                 ) -> dict[str, int]:
    """The layout under ``out``; returns its class counts (train real/fake, test real/fake)."""
    meta = pd.read_csv(source / "meta.csv", dtype={"Id": str})
    unknown = sorted((set(train_generators) | set(test_generators)) - set(meta["generator"]))
    if unknown:
        raise SystemExit(f"{source / 'meta.csv'}: no generator {unknown[0]!r} (has {sorted(set(meta['generator']))})")
    real = meta["generator"] == "real"
    train = meta[(meta["split"] == "train") & (real | meta["generator"].isin(train_generators))]
    test = meta[(meta["split"] == "test") & (real | meta["generator"].isin(test_generators))]
    labels = pd.read_csv(source / "train_solution.csv", dtype={"Id": str}).set_index("Id")
    out.mkdir(parents=True, exist_ok=True)
    labels.loc[sorted(train["Id"])].reset_index().to_csv(out / "train_solution.csv", index=False)
    test.sort_values("Id")[["Id", "target_feature"]].to_csv(out / "test_solution.csv", index=False)
    train.merge(test, how="outer").to_csv(out / "meta.csv", index=False)
    for split, rows in (("train", train), ("test", test)):
        folder = out / f"{split}_audio"
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
        folder.mkdir(exist_ok=True)
        files = {p.stem: p for p in (source / f"{split}_audio").iterdir()}
        for ident in rows["Id"]:
            (folder / files[ident].name).symlink_to(files[ident].resolve())
    return {"train_real": int((train["target_feature"] == 0).sum()), "train_fake": int(train["target_feature"].sum()),
            "test_real": int((test["target_feature"] == 0).sum()), "test_fake": int(test["target_feature"].sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a speech set with meta.csv (Id, split, target_feature, generator)")
    p.add_argument("--out", type=Path, required=True, help="folder for the layouts, <source name>-<protocol>")
    p.add_argument("--protocol", action="append", choices=sorted(PROTOCOLS), help="default: all")
    args = p.parse_args(argv)
    for name in args.protocol or sorted(PROTOCOLS):
        counts = write_layout(args.source, args.out / f"{args.source.name}-{name}", *PROTOCOLS[name])
        print(f"{args.source.name}-{name}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
