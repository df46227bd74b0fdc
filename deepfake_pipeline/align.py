"""Stage 1, alignment: every input image -> one square face crop + one manifest row.

Outputs under ``align.out``::

    train/<Id>.jpg  test/<Id>.jpg     the crops (JPEG, written atomically)
    faces.csv                         the manifest: every input Id of a finished split, once
    align_config.yaml                 the resolved config, headed by the settings hash
    .journal/<splits>-<i>-of-<n>.jsonl  one JSON line per finished image, per shard

Resume: a journal line is appended (and flushed) only after its JPEG is in place. A rerun
reuses a line when its settings hash, the source fingerprint (size + mtime_ns) and the output
file's (size, mtime_ns) all still match; anything else is redone. A torn last line (killed
mid-write) is ignored and cut off before appending. ``faces.csv`` is (re)built from all journals
by whichever shard finds every Id of the requested splits done, or by ``--merge-only``.

Shards: the (split, Id) keys, sorted, are dealt ``keys[i::n]``; under torchrun RANK and
WORLD_SIZE give i and n. Each shard appends to its own journal file.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from .config import AlignConfig, Config, stage_hash, to_dict, to_yaml
from .dataset import load_layout
from .errors import DataValidationError, ImageReadError, PipelineError
from .faces import (
    Face,
    FaceDetector,
    choose,
    detection_copy,
    letterbox,
    look_closer,
    make_crop,
    resolve_device,
)
from .images import atomic_write_text, read_image, save_csv, save_jpeg
from .journal import (
    SPLITS,
    Journal,
    Shard,
    read_journals,
    selected_splits,
    shard_journal,
)
from .runtime import show_progress
from .workers import exit_with, forkserver_context, lifeline

log = logging.getLogger(__name__)

# Bump when the crop policy changes: old outputs are then redone. 2: native windows stay on the 16 px
# grid at image edges; a face's box no longer depends on its batch neighbours.
ALIGN_VERSION = 2
MANIFEST_NAME = "faces.csv"
MANIFEST_COLUMNS = [
    "Id", "split", "status", "prob", "box", "n_faces", "src_width", "src_height", "path", "note",
    "landmarks", "face_box", "settings_hash",
]
# Align keys that never change a crop (speed, location, exit policy) stay out of the hash.
_HASH_EXCLUDED = {"batch_size", "workers", "device", "max_unreadable_share", "out"}


def settings_hash(cfg: Config) -> str:
    """Hash of what decides the crops: align settings, the decoder's data settings, the version.

    ``data.root``/``pseudo_labels`` and ``align.out`` are left out on purpose: sources are
    fingerprinted one by one, and a new pseudo-label file must not realign every image.
    """
    full = to_dict(cfg)
    align = {k: v for k, v in full["align"].items() if k not in _HASH_EXCLUDED}
    data = {k: full["data"][k] for k in ("max_pixels", "allow_truncated")}
    return stage_hash(cfg, [], extra={"align": align, "data": data, "version": ALIGN_VERSION})


# ---------------------------------------------------------------- plan


@dataclass
class Item:
    split: str
    id: str
    src: Path
    fingerprint: str  # "<size>-<mtime_ns>" of the source, "" when it cannot be stat'ed

    @property
    def key(self) -> tuple[str, str]:
        return self.split, self.id

    @property
    def rel_out(self) -> str:
        return f"{self.split}/{self.id}.jpg"


def _fingerprint(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}-{st.st_mtime_ns}"


def plan_items(cfg: Config) -> list[Item]:
    """Validate the layout (raises DataValidationError) and list every (split, Id), sorted."""
    # Image headers are not pre-checked: decoding finds unreadable files and records them.
    layout = load_layout(cfg.data, check_images=False)
    items = []
    for split in (layout.train, layout.test):
        for ident, path in zip(split.frame["Id"], split.frame["path"]):
            items.append(Item(split.name, str(ident), Path(path), _fingerprint(Path(path))))
    items.sort(key=lambda it: it.key)
    return items


# ---------------------------------------------------------------- journal


def _output_stat(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}-{st.st_mtime_ns}"


def valid_entries(out: Path, items: list[Item], digest: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Newest journal entry per key that still matches settings, source and output file."""
    by_key = {it.key: it for it in items}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in read_journals(out):
        try:
            key = (entry["split"], entry["Id"])
            item = by_key.get(key)
            if item is None or entry["hash"] != digest or entry["src_fp"] != item.fingerprint:
                continue
            if entry["status"] != "unreadable" and entry["out_fp"] != _output_stat(out / entry["path"]):
                continue
            if key not in best or entry["t"] >= best[key]["t"]:
                best[key] = entry
        except (KeyError, TypeError):
            continue
    return best


# ---------------------------------------------------------------- decoding (DataLoader workers)


@dataclass
class Decoded:
    index: int
    # NumPy arrays, not tensors: a worker sends them pickled inline, where a tensor would cost a
    # shared-memory handle and a socket handshake per image (half the main process's time at 58k).
    pixels: np.ndarray | None = None  # HxWx3 uint8, full resolution
    small: np.ndarray | None = None  # the detection copy (when the main process detects)
    scale: tuple[float, float] = (1.0, 1.0)
    faces: list[Face] | None = None  # in source pixels, once detected
    note: str = ""
    error: str | None = None


class _BatchDataset(Dataset):
    """Item b = batch b of ``items``, decoded; with ``detect_here`` also detected (CPU workers).

    On the CPU, detection in each worker (one torch thread each) scales with the cores far
    better than one process's intra-op threads on MTCNN's many small operations.
    """

    def __init__(self, items: list[Item], cfg: Config, copies: bool, detect_here: bool):
        self.items = items
        self.cfg = cfg
        self.batch_size = max(1, cfg.align.batch_size)
        self.copies = copies or detect_here
        self.detect_here = detect_here
        self._detector: FaceDetector | None = None  # built lazily, once per worker
        self.stage: Connection | None = None  # read end of the stage's lifeline (workers.exit_with)

    def __len__(self) -> int:
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int) -> list[Decoded]:
        stop = min(len(self.items), (b + 1) * self.batch_size)
        batch = [self._decode(i) for i in range(b * self.batch_size, stop)]
        if self.detect_here:
            if self._detector is None:
                self._detector = FaceDetector.for_config(self.cfg.align, "cpu")
            detect_batch(self._detector, batch, self.cfg.align)
        return batch

    def _decode(self, index: int) -> Decoded:
        data = self.cfg.data
        try:
            loaded = read_image(self.items[index].src, data.max_pixels, data.allow_truncated)
        except ImageReadError as exc:
            return Decoded(index, error=exc.reason)
        except OSError as exc:  # vanished or unreadable file
            return Decoded(index, error=f"cannot read: {exc}")
        pixels = loaded.pixels if loaded.pixels.flags.writeable else loaded.pixels.copy()
        result = Decoded(index, pixels, note=loaded.note)
        if self.copies:
            result.small, result.scale = detection_copy(pixels, self.cfg.align.detect_max_side)
        return result


def detect_batch(detector: FaceDetector, batch: list[Decoded], cfg: AlignConfig) -> None:
    """Fill ``faces`` of the decoded images of ``batch`` (one padded MTCNN batch, then a closer
    look at the misses); drop the detection copies."""
    ok = [d for d in batch if d.error is None and d.small is not None and d.pixels is not None]
    if ok:
        found = detector.detect([d.small for d in ok], [d.scale for d in ok])  # type: ignore[misc]
        look_closer(detector, [d.pixels for d in ok], found, cfg)  # type: ignore[misc]
        for d, faces in zip(ok, found):
            d.faces = faces
    for d in batch:
        d.small = None  # not needed any more (and not sent back from a worker)
        if d.faces is None:
            d.faces = []


def _worker_init(_: int) -> None:
    """A worker's start: one OpenCV thread, and an end of its own when the stage process dies."""
    from torch.utils.data import get_worker_info

    cv2.setNumThreads(1)
    info = get_worker_info()
    stage = getattr(info.dataset, "stage", None) if info is not None else None
    if stage is not None:
        exit_with(stage)


def _as_list(batch: list[Decoded]) -> list[Decoded]:
    return batch


# ---------------------------------------------------------------- one image -> entry


def _fmt(values: np.ndarray | tuple | None, digits: int) -> str:
    if values is None:
        return ""
    return " ".join(f"{v:.{digits}f}" if digits else str(int(round(float(v)))) for v in np.ravel(values))


def _finish(item: Item, dec: Decoded, faces: list[Face] | None, cfg: Config, out: Path,
            digest: str) -> dict[str, Any]:
    """Crop, write the JPEG (atomically) and return the journal entry."""
    entry: dict[str, Any] = {
        "split": item.split, "Id": item.id, "status": "unreadable", "prob": None, "box": "",
        "n_faces": None, "src_width": None, "src_height": None, "path": "", "note": dec.note,
        "landmarks": "", "face_box": "", "hash": digest, "src_fp": item.fingerprint, "out_fp": "",
    }
    if dec.error is not None or dec.pixels is None:
        entry["note"] = dec.error or "not decoded"
    else:
        pixels = dec.pixels
        height, width = pixels.shape[:2]
        entry.update(src_width=width, src_height=height)
        notes = [dec.note] if dec.note else []
        if faces is None:  # alignment disabled
            crop = letterbox(pixels, cfg.align.size)
            entry.update(status="whole", box=_fmt((0, 0, width, height), 0))
        else:
            choice = choose(faces, width, height, cfg.align)
            crop, shown = make_crop(pixels, choice.box, cfg.align)
            entry.update(status=choice.status, box=_fmt(shown, 0), n_faces=choice.n_faces)
            if choice.best_prob is not None:
                entry["prob"] = round(choice.best_prob, 5)
            if choice.face is not None:
                entry["prob"] = round(choice.face.prob, 5)
                entry["face_box"] = _fmt(choice.face.box, 1)
                entry["landmarks"] = _fmt(choice.face.landmarks, 1)
            elif choice.best_prob is None:
                notes.append("no face detected")
            else:
                notes.append(f"best face prob {choice.best_prob:.3f} < min_prob {cfg.align.min_prob}")
        target = out / item.rel_out
        save_jpeg(target, crop, cfg.align.jpeg_quality, durable=False)  # one sync at the end of _process
        entry.update(path=item.rel_out, note="; ".join(notes), out_fp=_output_stat(target))
    entry["t"] = time.time()
    return entry


# ---------------------------------------------------------------- the stage


@dataclass
class AlignSummary:
    processed: int = 0  # images done by this call
    reused: int = 0  # images of this shard already done with the same settings
    seconds: float = 0.0
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> status -> n (all shards)
    manifest: Path | None = None
    pending: int = 0  # Ids of the requested splits not done yet (other shards)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"align: {self.processed} image(s) in {self.seconds:.1f}s ({self.images_per_s:.1f} img/s), "
                 f"{self.reused} already done"]
        for split, counter in self.counts.items():
            parts.append(f"{split}: " + " ".join(f"{k}={v}" for k, v in sorted(counter.items())))
        done = f"manifest {self.manifest}" if self.manifest else f"manifest pending: {self.pending} left"
        parts.append(done)
        return " | ".join(parts)


def run_align(cfg: Config, splits: str | tuple[str, ...] = "all", shard: Shard | None = None,
              force: bool = False, merge_only: bool = False) -> AlignSummary:
    """Align the images of ``splits`` that belong to ``shard``; rebuild faces.csv when complete."""
    chosen = selected_splits(splits)
    shard = shard or Shard()
    out = Path(cfg.align.out)
    digest = settings_hash(cfg)
    all_items = plan_items(cfg)  # validation before any work
    wanted = [it for it in all_items if it.split in chosen]
    summary = AlignSummary()

    entries: dict[tuple[str, str], dict[str, Any]] = {}
    if not merge_only:
        mine = wanted[shard.index::shard.count]
        with shard_journal(out, chosen, shard, force) as journal:
            header = f"# align settings hash: {digest}\n"
            atomic_write_text(out / "align_config.yaml", header + to_yaml(cfg))
            # One scan of the journals (it stats every output file): what this shard has done, and
            # what the manifest will need once the rest is done.
            entries = {} if force else valid_entries(out, all_items, digest)
            todo = [it for it in mine if it.key not in entries]
            summary.reused = len(mine) - len(todo)
            if todo:
                (out / MANIFEST_NAME).unlink(missing_ok=True)  # rebuilt once every Id is done
                log.info("align shard %s: %d to do, %d already done (settings %s) -> %s",
                         shard, len(todo), summary.reused, digest, out)
                start = time.perf_counter()
                entries.update({(e["split"], e["Id"]): e for e in _process(todo, cfg, out, digest, journal)})
                summary.seconds = time.perf_counter() - start
                summary.processed = len(todo)

    if any(it.key not in entries for it in all_items):  # other shards' (or splits') work, or --merge-only
        entries = valid_entries(out, all_items, digest)
    complete = [s for s in SPLITS if all(it.key in entries for it in all_items if it.split == s)]
    summary.pending = sum(1 for it in wanted if it.key not in entries)
    for split in chosen:
        summary.counts[split] = Counter(entries[it.key]["status"] for it in wanted
                                        if it.split == split and it.key in entries)
    if summary.pending:
        if merge_only:
            raise PipelineError(f"{summary.pending} of {len(wanted)} image(s) of {', '.join(chosen)} are not "
                                f"aligned with these settings yet: run align_faces.py without --merge-only")
        log.info("faces.csv not written yet: %d image(s) left to other shards", summary.pending)
        print(summary.line(), flush=True)
        return summary

    rows = [it for it in all_items if it.split in complete]
    manifest = build_manifest(rows, entries, out)
    summary.manifest = out / MANIFEST_NAME
    save_csv(summary.manifest, manifest)
    missing = [s for s in SPLITS if s not in complete]
    if missing:
        log.warning("faces.csv has no rows for split(s) %s yet (run with --split all)", ", ".join(missing))
    print(summary.line(), flush=True)
    _report_face_sizes(manifest, cfg)
    _check_unreadable(manifest, cfg)
    return summary


def _report_face_sizes(manifest: pd.DataFrame, cfg: Config) -> None:
    """Log the median face square in source pixels: native windows (align.resize false) show the face
    whole when align.size is about that, and cut into it when much smaller."""
    faces = manifest[manifest["status"] == "face"]
    sides = []
    for face_box in faces.get("face_box", pd.Series(dtype=str)):
        values = [float(v) for v in str(face_box).split()] if face_box else []
        if len(values) == 4:
            w, h = values[2] - values[0], values[3] - values[1]
            sides.append(max(w, h) * (1 + 2 * cfg.align.margin))
    if sides:
        median = float(np.median(sides))
        log.info("align: median face square %.0f px in the source images (with the margin); align.size %d%s",
                 median, cfg.align.size, " (native windows: smaller than most faces, they show their centre)"
                 if not cfg.align.resize and cfg.align.size < 0.75 * median else "")


def build_manifest(items: list[Item], entries: dict[tuple[str, str], dict[str, Any]], out: Path
                   ) -> pd.DataFrame:
    """faces.csv rows, one per item, in (split, Id) order; ``path`` as <align.out>/<split>/<Id>.jpg."""
    rows = []
    for it in items:
        e = entries[it.key]
        rows.append({
            "Id": it.id, "split": it.split, "status": e["status"], "prob": e["prob"], "box": e["box"],
            "n_faces": e["n_faces"], "src_width": e["src_width"], "src_height": e["src_height"],
            "path": str(out / e["path"]) if e["path"] else "", "note": e["note"],
            "landmarks": e["landmarks"], "face_box": e["face_box"], "settings_hash": e["hash"],
        })
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("n_faces", "src_width", "src_height"):
        frame[col] = frame[col].astype("Int64")
    return frame


def _check_unreadable(manifest: pd.DataFrame, cfg: Config) -> None:
    bad = manifest[manifest["status"] == "unreadable"]
    if len(manifest) == 0 or len(bad) == 0:
        return
    share = len(bad) / len(manifest)
    log.warning("%d unreadable input image(s) (%.2f%%), recorded in faces.csv", len(bad), 100 * share)
    if share > cfg.align.max_unreadable_share:
        problems = [
            f"{len(bad)} of {len(manifest)} input images ({share:.1%}) are unreadable, more than "
            f"align.max_unreadable_share={cfg.align.max_unreadable_share:.1%} (faces.csv lists them all)"
        ]
        problems += [f"{r.split}/{r.Id}: {r.note}" for r in bad.head(10).itertuples()]
        raise DataValidationError(problems)


def detect_stream(items: list[Item], cfg: Config) -> Iterator[tuple[int, Decoded, list[Face] | None]]:
    """(index into ``items``, decoded image, faces in source pixels or None when not detecting).

    Decoding and the detection copies happen in ``align.workers`` DataLoader workers, a batch of
    ``align.batch_size`` at a time. On CUDA (or without workers) detection runs here, batched; on
    the CPU with workers, each worker detects its own batches.
    """
    acfg = cfg.align
    device = resolve_device(acfg.device) if acfg.enabled else None
    in_workers = device is not None and device.type == "cpu" and acfg.workers > 0
    detector = None
    if device is not None:
        log.info("detector: MTCNN on %s%s, detection copies <= %d px, min face %.0f%% of the short side",
                 device, f" in {acfg.workers} workers" if in_workers else "", acfg.detect_max_side,
                 100 * acfg.min_face_frac)
        if not in_workers:
            detector = FaceDetector.for_config(acfg, device)
    dataset = _BatchDataset(items, cfg, copies=detector is not None, detect_here=in_workers)
    if acfg.workers <= 0:
        yield from _detected((dataset[b] for b in range(len(dataset))), detector, acfg)
        return
    ctx = forkserver_context([__name__])
    dataset.stage, keep_alive = lifeline(ctx)
    try:
        yield from _detected(DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=acfg.workers, collate_fn=_as_list,
            worker_init_fn=_worker_init, prefetch_factor=2, multiprocessing_context=ctx,
        ), detector, acfg)
    finally:
        keep_alive.close()
        dataset.stage.close()


def _detected(batches: Iterable[list[Decoded]], detector: FaceDetector | None, acfg: AlignConfig
              ) -> Iterator[tuple[int, Decoded, list[Face] | None]]:
    for batch in batches:
        if detector is not None:
            detect_batch(detector, batch, acfg)
        for dec in batch:
            yield dec.index, dec, ((dec.faces or []) if acfg.enabled else None)


def _process(todo: list[Item], cfg: Config, out: Path, digest: str, journal: Journal) -> list[dict[str, Any]]:
    """Decode (and detect) via detect_stream, crop+write in threads, journal each result; the entries."""
    from tqdm import tqdm

    pending: deque[Future] = deque()  # writes in submission order: oldest first
    limit = 4 * max(1, cfg.align.batch_size)

    done: list[dict[str, Any]] = []

    def journal_oldest() -> None:
        entry = pending.popleft().result()
        journal.append(entry)  # only after the JPEG is in place
        done.append(entry)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="align-write") as writers, \
            tqdm(total=len(todo), unit="img", desc="align", disable=not show_progress(cfg.run.progress)) as bar:
        for index, dec, faces in detect_stream(todo, cfg):
            pending.append(writers.submit(_finish, todo[index], dec, faces, cfg, out, digest))
            bar.update(1)
            while pending and (pending[0].done() or len(pending) > limit):
                journal_oldest()
        while pending:
            journal_oldest()
    os.sync()  # the crops were written without a sync each; one for all of them (see images.atomic_path)
    return done
