"""Prediction throughput: N TTA views x K fold models over in-memory uint8 faces, images/s.

The same code path as ``trained.ensemble_logits``: K classifiers from ``model.build_classifier``
(random init, seeded per fold, no weight files), put on the device, eval mode and channels_last as
``trained.load_fold_model`` does, then ``engine.predict_logits`` with ``augment.parse_tta`` views
over an ``engine.make_loader`` loader, summed over the folds. What is left out: JPEG decoding (see
input_pipeline.py) and reading the fold weights from disk (the models are built up front).
The reference row (1 fold x identity) shows the cost of one forward pass per image.

  python benchmarks/predict_speed.py --size 512 --backbone convnextv2_tiny --folds 5 --images 512
  python benchmarks/predict_speed.py --size 128 --backbone convnextv2_atto --tta identity,hflip,rot+5,rot-5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    bench_config,
    describe_device,
    isolated,
    meta,
    parse_list,
    peak_memory_mb,
    reset_peak,
    sync,
    table,
    write_json,
)

from deepfake_pipeline.augment import InputFit, input_fit, parse_tta  # noqa: E402
from deepfake_pipeline.config import Config  # noqa: E402
from deepfake_pipeline.engine import make_loader, predict_logits  # noqa: E402
from deepfake_pipeline.model import build_classifier  # noqa: E402
from deepfake_pipeline.runtime import Runtime, derive_seed, init_runtime, seed_everything  # noqa: E402


class MemoryFaces(Dataset):
    """``n`` random uint8 3 x size x size faces held in host memory (FaceDataset's item format)."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[index], torch.tensor(-1.0), index


def fold_models(cfg: Config, rt: Runtime, folds: int) -> list[torch.nn.Module]:
    """As trained.load_fold_model, with a seeded random init instead of the fold's weights."""
    models = []
    for k in range(folds):
        seed_everything(derive_seed(cfg.run.seed, "init", k))
        model = build_classifier(cfg.model).to(rt.device).eval()
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
    return models


def run_ensemble(models: list[torch.nn.Module], loader: Any, rt: Runtime, fit: InputFit, views: list[Any]) -> np.ndarray:
    """The loop of trained.ensemble_logits: mean over folds of predict_logits (mean over views)."""
    total = np.zeros(len(loader.dataset), dtype=np.float64)
    for model in models:
        total += predict_logits(model, loader, rt, fit, views).double().numpy()
    return total / max(1, len(models))


def measure(cfg: Config, rt: Runtime, folds: int, tta: list[str], args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)  # again in a forked child
    views = parse_tta(tta)
    models = fold_models(cfg, rt, folds)
    data = MemoryFaces(args.images, cfg.model.img_size)
    loader = make_loader(data, None, rt, args.workers, cfg.run.seed, batch_size=args.batch)
    warm = make_loader(MemoryFaces(min(args.batch, args.images), cfg.model.img_size), None, rt, 0, cfg.run.seed,
                       batch_size=args.batch)
    for model in models:  # cudnn autotuning, allocator growth
        predict_logits(model, warm, rt, input_fit(cfg.model), views)
    reset_peak(rt.device)
    start = time.perf_counter()
    logits = run_ensemble(models, loader, rt, input_fit(cfg.model), views)
    sync(rt.device)
    seconds = time.perf_counter() - start
    mem, kind = peak_memory_mb(rt.device)
    passes = args.images * folds * len(views)
    assert np.isfinite(logits).all(), "non-finite logits"
    return {
        "folds": folds, "views": len(views), "tta": ",".join(tta), "images": args.images, "batch": args.batch,
        "seconds": seconds, "images_per_s": args.images / seconds, "forward_images_per_s": passes / seconds,
        "ms_per_batch_per_model_view": 1000 * seconds / (folds * len(views) * -(-args.images // args.batch)),
        "peak_mem_mb": mem, "peak_mem_kind": kind,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--size", type=int, default=None, help="model.img_size (default: config, 512)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--channels", default=None, help="model.channels, e.g. rgb,fft,srm")
    p.add_argument("--folds", type=int, default=None, help="fold models K (default: finetune.folds)")
    p.add_argument("--tta", default=None, help="views, e.g. identity,hflip,rot+5,rot-5 (default: predict.tta)")
    p.add_argument("--batch", type=int, default=None, help="default: predict.batch_size")
    p.add_argument("--images", type=int, default=256, help="test images per timed pass")
    p.add_argument("--workers", type=int, default=0, help="loader workers (the data is in memory)")
    p.add_argument("--amp", default=None, help="run.amp (auto, bf16, fp16, off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-reference", action="store_true", help="skip the 1 fold x identity reference row")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.config, args.set, **{
        "model.img_size": args.size, "model.backbone": args.backbone, "run.amp": args.amp,
        "model.channels": f"[{args.channels}]" if args.channels else None,
    })
    rt = init_runtime(args.device, cfg.run.amp, cfg.run.channels_last)
    folds = args.folds or cfg.finetune.folds
    tta = parse_list(args.tta) if args.tta else list(cfg.predict.tta)
    args.batch = args.batch or cfg.predict.batch_size
    print(f"predict_speed: {cfg.model.backbone} {cfg.model.img_size} px, channels {'+'.join(cfg.model.channels)}, "
          f"{rt.describe()}, batch {args.batch}, {args.images} images; {describe_device(rt.device)}")
    configs = [(folds, tta)] + ([] if args.no_reference or (folds, tta) == (1, ["identity"]) else [(1, ["identity"])])
    # CPU: each configuration in a forked child, so that its peak RSS is its own.
    rows = [isolated(measure, cfg, rt, k, views, args, fork=rt.device.type == "cpu") for k, views in configs]
    errors = [r["error"] for r in rows if r.get("error")]
    if errors:
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        return 1
    print(table(rows, [
        ("folds", "folds"), ("views", "views"), ("tta", "TTA"), ("images_per_s", "img/s"),
        ("forward_images_per_s", "forward img/s"), ("ms_per_batch_per_model_view", "ms/batch/pass"),
        ("peak_mem_mb", "peak MiB"),
    ]))
    print(f"img/s = test images fully predicted (all folds x views) per second; peak memory = {rows[0]['peak_mem_kind']}")
    if rt.device.type == "cpu":
        print("CPU run (fp32): absolute figures are not GPU claims.")
    write_json(args.json, {"meta": {**meta(rt.device), "runtime": rt.describe(), "backbone": cfg.model.backbone,
                                    "size": cfg.model.img_size}, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
