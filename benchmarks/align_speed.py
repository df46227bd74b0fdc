"""Face-detection throughput: the straightforward MTCNN baseline vs the pipeline's detection path.

Same images, same process. Both include decoding; neither crops or writes (that part is the
same for both). Detection rate = share of images with a face of prob >= align.min_prob.

  baseline  full-size PIL images -> MTCNN(keep_all=True).detect, batches of 32 equal-size
            images (grouped by size), decoded one by one in the main process
  ours      deepfake_pipeline.align.detect_stream: decoding + downscaling in align.workers
            DataLoader workers, detection copies <= align.detect_max_side, padded batches of
            align.batch_size, min_face_size = align.min_face_frac x short side, channels_last,
            a second and a closer look (align.retry_max_side) at misses; on the CPU each
            worker detects its own batches

Run:  python benchmarks/align_speed.py /work/shared/datasets/rfff [--limit N] [--set align.X=Y]
On a shared machine, use --repeats 2: rounds run A B B A and the totals are compared; images per
CPU-second (this process, its forkserver and DataLoader workers) is printed too, as it moves less
than wall time when other processes compete for the cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import describe_device, meta, write_json  # noqa: E402

from deepfake_pipeline.align import Item, detect_stream  # noqa: E402
from deepfake_pipeline.config import Config, load_config  # noqa: E402
from deepfake_pipeline.faces import choose, resolve_device  # noqa: E402
from deepfake_pipeline.images import IMAGE_EXTENSIONS  # noqa: E402


def list_images(folders: list[str], limit: int | None) -> list[Path]:
    paths = sorted(
        p for folder in folders for p in Path(folder).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    return paths[:limit] if limit else paths


def cpu_seconds() -> float:
    """CPU time of this process, its finished children, and its live children with theirs.

    The alignment workers are forked by a forkserver (a live child of this process) that reaps
    them, so their time is in the forkserver's cutime/cstime (/proc/<pid>/stat), not in ours.
    """
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile (then reaped: counted in children_* above)
                continue
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def run_baseline(paths: list[Path], cfg: Config, batch: int = 32) -> tuple[float, list[np.ndarray | None]]:
    """Seconds, and per image the most confident box >= min_prob (None: no face)."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device=resolve_device(cfg.align.device))
    start = time.perf_counter()
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            by_size[img.size].append(i)
    best: list[np.ndarray | None] = [None] * len(paths)
    for indices in by_size.values():
        for k in range(0, len(indices), batch):
            chunk = indices[k:k + batch]
            images = [Image.open(paths[i]).convert("RGB") for i in chunk]
            boxes, probs = mtcnn.detect(images)
            for i, bx, pr in zip(chunk, boxes, probs):
                if bx is None:
                    continue
                pr = np.asarray(pr, dtype=float)
                j = int(np.argmax(pr))
                if pr[j] >= cfg.align.min_prob:
                    best[i] = np.asarray(bx[j], dtype=float)
    return time.perf_counter() - start, best


def run_ours(paths: list[Path], cfg: Config) -> tuple[float, list[np.ndarray | None]]:
    items = [Item("bench", p.stem, p, "") for p in paths]
    start = time.perf_counter()
    best: list[np.ndarray | None] = [None] * len(paths)
    for index, dec, faces in detect_stream(items, cfg):
        if dec.pixels is None or faces is None:
            continue
        height, width = dec.pixels.shape[:2]
        choice = choose(faces, width, height, cfg.align)
        if choice.face is not None:
            best[index] = np.asarray(choice.face.box, dtype=float)
    return time.perf_counter() - start, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="image folder(s), searched recursively")
    parser.add_argument("--limit", type=int, default=None, help="first N images (sorted paths)")
    parser.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per method, ordered A B B A ...")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config, ["run.name=bench", *args.overrides])
    cfg.run.progress = False
    paths = list_images(args.folders, args.limit)
    if not paths:
        print(f"no images under {args.folders}", file=sys.stderr)
        return 2
    a = cfg.align
    device = resolve_device(a.device)
    print(f"{len(paths)} images from {', '.join(args.folders)}; {describe_device(device)}; "
          f"load avg {os.getloadavg()[0]:.2f}")
    print(f"ours: detect_max_side={a.detect_max_side} min_face_frac={a.min_face_frac} "
          f"batch_size={a.batch_size} workers={a.workers}; min_prob={a.min_prob}")

    warm = paths[:8]  # one-time costs (weights, oneDNN kernels) out of the timings
    run_baseline(warm, cfg)
    run_ours(warm, cfg)

    times: dict[str, float] = {"baseline": 0.0, "ours": 0.0}
    cpu: dict[str, float] = {"baseline": 0.0, "ours": 0.0}
    found: dict[str, list[np.ndarray | None]] = {}
    order = []
    for r in range(args.repeats):
        order += ["baseline", "ours"] if r % 2 == 0 else ["ours", "baseline"]
    for name in order:
        cpu0 = cpu_seconds()
        seconds, boxes = (run_baseline if name == "baseline" else run_ours)(paths, cfg)
        used = cpu_seconds() - cpu0
        times[name] += seconds
        cpu[name] += used
        found[name] = boxes
        print(f"  round {name:8s} {seconds:7.1f} s  {len(paths) / seconds:7.1f} img/s  "
              f"{len(paths) / used:7.1f} img/CPU-s  load {os.getloadavg()[0]:.2f}", flush=True)

    n = len(paths) * args.repeats
    ips = {k: n / v for k, v in times.items()}
    per_cpu = {k: n / v for k, v in cpu.items()}
    rate = {k: float(np.mean([b is not None for b in v])) for k, v in found.items()}
    both = [iou(x, y) for x, y in zip(found["baseline"], found["ours"]) if x is not None and y is not None]
    result = {
        "images": len(paths), "repeats": args.repeats,
        "baseline_img_s": round(ips["baseline"], 2), "ours_img_s": round(ips["ours"], 2),
        "speedup": round(ips["ours"] / ips["baseline"], 2),
        "baseline_img_per_cpu_s": round(per_cpu["baseline"], 2),
        "ours_img_per_cpu_s": round(per_cpu["ours"], 2),
        "speedup_cpu": round(per_cpu["ours"] / per_cpu["baseline"], 2),
        "baseline_detection_rate": round(rate["baseline"], 4), "ours_detection_rate": round(rate["ours"], 4),
        "box_iou_mean": round(float(np.mean(both)), 3) if both else None,
        "settings": {k: getattr(a, k) for k in ("detect_max_side", "min_face_frac", "batch_size", "workers")},
        "load_avg_end": round(os.getloadavg()[0], 2),
    }
    for k in ("baseline", "ours"):
        print(f"{k:8s} {ips[k]:6.1f} img/s ({per_cpu[k]:.1f} img/CPU-s), detection rate {rate[k]:.2%}")
    print(f"speedup  {result['speedup']:.2f}x wall, {result['speedup_cpu']:.2f}x per CPU-second")
    print(f"mean IoU of the chosen boxes {result['box_iou_mean']} ({len(both)} images with a face in both)")
    write_json(args.json, {**meta(device), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
