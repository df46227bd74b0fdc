"""Input pipeline throughput: JPEG files on local disk -> augmented float tensors on the device.

Every method ends the same way as a training step's input: ``engine.to_device_float`` (uint8 ->
float [0, 1] on the device, resized to --img-size if it differs) and then the stage's augmentation
(``augment.build_train_augment``) on the device. Only the decoding differs:

  torchvision  dataset.FaceDataset (torchvision.io.decode_jpeg, libjpeg-turbo) in DataLoader workers
               through engine.make_loader: the pipeline's own path
  pil          PIL.Image.open(...).convert("RGB") in the workers
  opencv       cv2.imread + BGR->RGB in the workers
  nvjpeg       the workers only read the bytes; torchvision.io.decode_jpeg(list, device="cuda")
               decodes the whole batch on the GPU (CUDA only)
  no-decode    a decoded batch already on the device, through the same to_device_float + augmentation:
               the ceiling the decoders are measured against

The first --warmup batches (worker start-up) are not timed; one device sync at the end.

  python benchmarks/input_pipeline.py --make 512 --size 512 --workers 0,2,8 --batch 32
  python benchmarks/input_pipeline.py --dir data/faces_512/train --workers 8
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_config, describe_device, meta, parse_list, sync, table, write_json  # noqa: E402

from deepfake_pipeline.augment import (
    build_train_augment,  # noqa: E402
    resize_batch,  # noqa: E402
)
from deepfake_pipeline.dataset import FaceDataset  # noqa: E402
from deepfake_pipeline.engine import make_loader, to_device_float  # noqa: E402
from deepfake_pipeline.runtime import Runtime, init_runtime  # noqa: E402

Item = tuple[torch.Tensor, torch.Tensor, int]


def make_jpegs(folder: Path, n: int, size: int, quality: int = 95, seed: int = 0) -> list[Path]:
    """``n`` distinct size x size JPEGs that compress like photos (smooth colour fields, shapes, mild
    noise), at the quality the alignment stage writes (align.jpeg_quality = 95)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.integers(0, size, 2)
            r = int(rng.integers(size // 16, size // 4))
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, (size, size, 3)).astype(np.int16)
        path = folder / f"img{i:06d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


class PILFaces(Dataset):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        from PIL import Image

        with Image.open(self.paths[index]) as img:
            arr = np.array(img.convert("RGB"))  # writable copy for torch.from_numpy
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), torch.tensor(-1.0), index


class OpenCVFaces(Dataset):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        import cv2

        cv2.setNumThreads(1)  # one decode per worker; the workers are the parallelism
        bgr = cv2.imread(self.paths[index], cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"{self.paths[index]}: OpenCV could not read the file")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), torch.tensor(-1.0), index


class JpegBytes(Dataset):
    """Raw file bytes (uint8 1-D) for batched GPU decoding."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from torchvision.io import read_file

        return read_file(self.paths[index])


def _as_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


def batches_cpu(dataset: Dataset, rt: Runtime, workers: int, batch: int) -> Iterable[torch.Tensor]:
    """uint8 host batches from the pipeline's loader (pinned on CUDA, prefetch 4, seeded)."""
    for images, _, _ in make_loader(dataset, None, rt, workers, seed=0, batch_size=batch):
        yield images


def batches_nvjpeg(paths: list[str], rt: Runtime, workers: int, batch: int) -> Iterable[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    kwargs: dict[str, Any] = {"prefetch_factor": 4} if workers > 0 else {}
    loader = DataLoader(JpegBytes(paths), batch_size=batch, num_workers=workers, collate_fn=_as_list, **kwargs)
    for data in loader:
        yield torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB, device=rt.device))


def batches_resident(paths: list[str], rt: Runtime, batch: int, n_batches: int) -> Iterable[torch.Tensor]:
    """One decoded batch kept on the device, handed out ``n_batches`` times."""
    images = torch.stack([FaceDataset([p])[0][0] for p in paths[:batch]]).to(rt.device)
    for _ in range(n_batches):
        yield images


def time_method(source: Iterable[torch.Tensor], rt: Runtime, img_size: int, augment: torch.nn.Module,
                warmup: int) -> dict[str, Any]:
    """Drain ``source`` through to_device_float + augment; time everything after ``warmup`` batches."""
    images = 0
    start = None
    with torch.no_grad():
        for i, batch in enumerate(source):
            if i == warmup:
                sync(rt.device)
                start = time.perf_counter()
            x = augment(resize_batch(to_device_float(batch, rt), img_size))
            if start is not None:
                images += x.shape[0]
    sync(rt.device)
    if start is None or images == 0:
        return {"error": f"fewer than {warmup + 1} batches: add images or lower --warmup/--batch"}
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def aug_breakdown(paths: list[str], rt: Runtime, augment: torch.nn.Module, batch: int, img_size: int,
                  repeats: int) -> list[dict[str, Any]]:
    """ms per batch of each augmentation op at its configured probability (resident batch, no decoding)."""
    ops = list(getattr(augment, "ops", None) or [])
    if not ops:
        return []
    x = resize_batch(to_device_float(next(iter(batches_resident(paths, rt, batch, 1))), rt), img_size)
    rows = []
    with torch.no_grad():
        for op in ops:
            op(x)  # warm-up
            sync(rt.device)
            start = time.perf_counter()
            for _ in range(repeats):
                op(x)
            sync(rt.device)
            ms = 1000 * (time.perf_counter() - start) / repeats
            rows.append({"op": type(op).__name__, "p": float(getattr(op, "p", 1.0)), "ms_per_batch": ms,
                         "ms_per_image": ms / x.shape[0]})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dir", default=None, help="JPEG folder to read (with --make: written there first)")
    p.add_argument("--make", type=int, default=None, help="write this many synthetic JPEGs first (temp dir by default)")
    p.add_argument("--size", type=int, default=512, help="side of the synthetic JPEGs")
    p.add_argument("--img-size", type=int, default=None, help="network input side (default: --size, no resize)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many files")
    p.add_argument("--workers", default="0,2", help="DataLoader worker counts to try, e.g. 0,2,8")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per run (worker start-up)")
    p.add_argument("--methods", default="torchvision,pil,opencv,nvjpeg,no-decode")
    p.add_argument("--aug", choices=("finetune", "ssl", "none"), default="finetune", help="whose augmentation")
    p.add_argument("--aug-breakdown", type=int, default=0, metavar="R",
                   help="also time each augmentation op alone, R batches each")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.config, args.set)
    rt = init_runtime(args.device, cfg.run.amp, cfg.run.channels_last)
    tmp: Path | None = None
    if args.make:
        folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="jpegs_"))
        tmp = None if args.dir else folder
        t0 = time.perf_counter()
        make_jpegs(folder, args.make, args.size)
        print(f"wrote {args.make} JPEGs of {args.size} px to {folder} in {time.perf_counter() - t0:.1f} s")
    elif args.dir:
        folder = Path(args.dir)
    else:
        raise SystemExit("give --make N (synthetic JPEGs) and/or --dir FOLDER")
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.limit]
    if not paths:
        raise SystemExit(f"{folder}: no .jpg files")
    first = FaceDataset(paths[:1])[0][0]
    img_size = args.img_size or int(first.shape[-1])
    mean_kb = sum(Path(p).stat().st_size for p in paths) / len(paths) / 1024
    aug_cfg = {"finetune": cfg.finetune.aug, "ssl": cfg.ssl.aug}.get(args.aug)
    augment = build_train_augment(aug_cfg).to(rt.device) if aug_cfg else torch.nn.Identity()
    print(f"input_pipeline: {len(paths)} JPEGs {tuple(first.shape[1:])} ({mean_kb:.0f} KiB mean) -> "
          f"{img_size} px, batch {args.batch}, augmentation: {args.aug}; {describe_device(rt.device)}")

    methods: dict[str, Callable[[int], Iterable[torch.Tensor]]] = {
        "torchvision": lambda w: batches_cpu(FaceDataset(paths), rt, w, args.batch),
        "pil": lambda w: batches_cpu(PILFaces(paths), rt, w, args.batch),
        "opencv": lambda w: batches_cpu(OpenCVFaces(paths), rt, w, args.batch),
        "nvjpeg": lambda w: batches_nvjpeg(paths, rt, w, args.batch),
    }
    rows: list[dict[str, Any]] = []
    for name in parse_list(args.methods):
        if name == "no-decode":
            r = time_method(batches_resident(paths, rt, args.batch, len(paths) // args.batch), rt, img_size,
                            augment, args.warmup)
            rows.append({"method": name, "workers": "-", **r})
            continue
        if name not in methods:
            raise SystemExit(f"unknown method {name!r} ({', '.join([*methods, 'no-decode'])})")
        for workers in parse_list(args.workers, int):
            if name == "nvjpeg" and rt.device.type != "cuda":
                rows.append({"method": name, "workers": workers, "error": "skipped: needs CUDA"})
                continue
            try:
                r = time_method(methods[name](workers), rt, img_size, augment, args.warmup)
            except Exception as exc:  # one failing decoder must not hide the others' figures
                r = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append({"method": name, "workers": workers, **r})
    for r in rows:
        if r.get("error"):
            r["images_per_s"] = r["error"]
    print(table(rows, [("method", "method"), ("workers", "workers"), ("images", "timed images"),
                       ("seconds", "s"), ("images_per_s", "img/s")]))
    breakdown = aug_breakdown(paths, rt, augment, args.batch, img_size, args.aug_breakdown) if args.aug_breakdown else []
    if breakdown:
        print(f"\naugmentation ops alone ({args.aug}, configured probabilities, batch {args.batch}, "
              f"{img_size} px, no decoding):")
        print(table(breakdown, [("op", "op"), ("p", "p"), ("ms_per_batch", "ms/batch"), ("ms_per_image", "ms/img")]))
    timed = [r for r in rows if isinstance(r.get("images_per_s"), float) and r["method"] != "no-decode"]
    if timed:
        best = max(timed, key=lambda r: r["images_per_s"])
        print(f"fastest decoding path: {best['method']} with {best['workers']} workers, "
              f"{best['images_per_s']:.1f} img/s")
        payload_best = {"method": best["method"], "workers": best["workers"], "images_per_s": best["images_per_s"]}
    else:
        payload_best = None
    if rt.device.type == "cpu":
        print("CPU run: the augmentation runs on the same cores as the decoders; absolute figures are not GPU "
              "claims.")
    write_json(args.json, {"meta": meta(rt.device), "files": len(paths), "file_kib": mean_kb, "img_size": img_size,
                           "batch": args.batch, "aug": args.aug, "results": rows, "aug_ops": breakdown, "fastest": payload_best})
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r.get("error") and not str(r["error"]).startswith("skipped") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
