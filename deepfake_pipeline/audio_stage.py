"""Stage 1 for speech (prepare_audio.py): every clip -> spectrogram window PNGs + manifest rows.

The audio twin of :mod:`deepfake_pipeline.align`, with the same contract, resume and shards.
Outputs under ``audio.out``::

    train/<Id>_w<k>.png  test/<Id>_w<k>.png   n_mels x frames RGB windows (PNG, written atomically)
    train/<Id>_w<k>.<codec>.png               the same window of the clip re-encoded (audio.codec_copies)
    train/<Id>_w<k>.made-<method>[.<codec>].png  the same window of a real clip resynthesised by <method>
                                              (audio.self_fakes, deepfake_pipeline.resynth) [re-encoded]
    faces.csv                                 the stage-1 manifest: one row per window, plus one row
                                              (window -1, no path) per clip without a window
    align_config.yaml                         the resolved config, headed by the settings hash
    .journal/<splits>-<i>-of-<n>.jsonl        one JSON line per finished clip, per shard

Resume: a clip's journal line is appended (and flushed) only after all its PNGs are in place. A
rerun reuses a line when its settings hash, the source fingerprint (size + mtime_ns) and every
window file's (size, mtime_ns) still match; anything else is redone. Torn last lines are ignored
and cut. ``faces.csv`` is (re)built from all journals by whichever shard finds every clip of the
requested splits done, or by ``--merge-only``. Shards deal the sorted (split, Id) keys as
``keys[i::n]``, exactly like alignment (the same Shard, Journal and journal reader).

Workers: ``audio.workers`` processes from a forkserver that preloads only :mod:`.audio` (numpy,
scipy, soundfile: no torch) decode and render; this process writes the files and the journal, in
the order of the keys. Each clip's PNGs depend on that clip and the settings alone, so the output
is byte-identical whatever the worker count.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from .audio import AUDIO_VERSION, DELTA_DB, Clip, missing_codecs, render_clip, window_samples
from .config import Config, stage_hash, to_dict, to_yaml
from .dataset import load_layout
from .errors import ConfigError, DataValidationError, PipelineError
from .faults import failpoint
from .images import atomic_write_bytes, atomic_write_text, save_csv
from .journal import (
    SPLITS,
    Journal,
    Shard,
    read_journals,
    selected_splits,
    shard_journal,
)
from .runtime import derive_seed, show_progress
from .workers import exit_with, forkserver_context, lifeline

log = logging.getLogger(__name__)

MANIFEST_NAME = "faces.csv"  # the stage-1 contract's name, shared with alignment
MANIFEST_COLUMNS = [
    "Id", "split", "window", "status", "path", "copies", "copy_levels", "note", "start_s", "end_s", "duration_s",
    "src_rate", "src_channels", "settings_hash", "made_from", "made_by",
]
MADE_SEPARATOR = "~"  # a self-made fake's Id: <source Id>~<method>
COPY_SPLIT = "train"  # codec copies are training material: labelled clips only
# Audio keys that never change a window (speed, location) stay out of the hash.
_HASH_EXCLUDED = {"workers", "out", "made_cache"}


def settings_hash(cfg: Config) -> str:
    """Hash of what decides the windows: audio settings, the decoder's data setting, the version.

    ``data.root`` and ``audio.out`` are left out on purpose: sources are fingerprinted one by one.
    ``run.seed`` is in when there are codec copies: it draws their levels. ``audio.self_fakes`` is out:
    each journal entry records the (method, seed) fakes it holds, and an entry is reused while it holds
    every fake its clip needs now (:func:`valid_entries`), so choosing fewer methods redoes nothing and
    adding one redoes the real training clips only.
    """
    full = to_dict(cfg)
    audio = {k: v for k, v in full["audio"].items() if k not in _HASH_EXCLUDED}
    data = {"allow_truncated": full["data"]["allow_truncated"]}
    extra = {"audio": audio, "data": data, "version": AUDIO_VERSION, "delta_db": DELTA_DB}
    del audio["self_fakes"]
    if audio["codec_copies"]:
        extra["seed"] = cfg.run.seed  # draws each copy's level (codec_plan)
    else:  # without copies their level and the seed cannot matter (and older outputs stay valid)
        del audio["codec_copies"], audio["codec_level"]
    return stage_hash(cfg, [], extra=extra)


def check_audio_config(cfg: Config) -> None:
    """The stage is for speech: ``data.modality`` must say so, and libsndfile must write every codec of
    ``audio.codec_copies`` (the other ``audio.*`` values are checked when the config loads,
    config._check_values)."""
    if cfg.data.modality != "audio":
        raise ConfigError(f"data.modality is {cfg.data.modality!r}: prepare_audio.py needs data.modality=audio")
    missing = missing_codecs(cfg.audio.codec_copies)
    if missing:
        raise ConfigError(f"audio.codec_copies: this libsndfile ({sf.__libsndfile_version__}) cannot write "
                          f"{', '.join(missing)}; install libsndfile >= 1.1 or drop them from the list")


# ---------------------------------------------------------------- plan


@dataclass
class ClipItem:
    split: str
    id: str
    src: Path
    fingerprint: str  # "<size>-<mtime_ns>" of the source, "" when it cannot be stat'ed
    copies: tuple[tuple[str, float], ...] = ()  # (codec, compression level) of each codec copy
    made: tuple[tuple[str, int], ...] = ()  # (method, seed) of each self-made fake (real train clips)

    @property
    def key(self) -> tuple[str, str]:
        return self.split, self.id

    def rel_out(self, window: int, codec: str = "") -> str:
        return f"{self.split}/{self.id}_w{window}{'.' + codec if codec else ''}.png"


def _stat(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}-{st.st_mtime_ns}"


def codec_plan(cfg: Config, split: str, ident: str) -> tuple[tuple[str, float], ...]:
    """The (codec, level) copies of one clip: train clips only; each level drawn uniformly from
    ``audio.codec_level`` by (seed, Id, codec) alone, so reruns and shards make the same bytes."""
    if split != COPY_SPLIT:
        return ()
    lo, hi = (float(v) for v in cfg.audio.codec_level)
    return tuple((codec, round(float(np.random.default_rng(derive_seed(cfg.run.seed, "codec", ident, codec))
                                     .uniform(lo, hi)), 4))
                 for codec in cfg.audio.codec_copies)


def made_plan(cfg: Config, split: str, ident: str, target: int | None) -> tuple[tuple[str, int], ...]:
    """The (method, seed) self-made fakes of one clip: real train clips only, seeded by (seed, Id, method)."""
    if split != COPY_SPLIT or target != 0:
        return ()
    return tuple((method, derive_seed(cfg.run.seed, "made", ident, method)) for method in cfg.audio.self_fakes)


def plan_clips(cfg: Config) -> list[ClipItem]:
    """Validate the layout (raises DataValidationError) and list every (split, Id), sorted."""
    # Headers are not pre-checked: render_clip reads them and records unreadable clips.
    layout = load_layout(cfg.data, check_images=False)
    items = []
    for split in (layout.train, layout.test):
        targets = split.frame["target"] if "target" in split.frame else [None] * len(split.frame)
        for ident, path, target in zip(split.frame["Id"], split.frame["path"], targets):
            ident = str(ident)
            if MADE_SEPARATOR in ident and cfg.audio.self_fakes:
                raise ConfigError(f"audio.self_fakes: input Id {ident!r} contains {MADE_SEPARATOR!r}, which names "
                                  "self-made fakes (<Id>~<method>): rename the file or drop audio.self_fakes")
            items.append(ClipItem(split.name, ident, Path(path), _stat(Path(path)), codec_plan(cfg, split.name, ident),
                                  made_plan(cfg, split.name, ident, None if target is None else int(target))))
    items.sort(key=lambda it: it.key)
    return items


# ---------------------------------------------------------------- journal


def valid_entries(out: Path, items: list[ClipItem], digest: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Newest journal entry per key that still matches settings, source and every window file, and
    holds every self-made fake (method, seed) its clip needs (it may hold more: they are left out of
    the manifest)."""
    by_key = {it.key: it for it in items}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in read_journals(out):
        try:
            key = (entry["split"], entry["Id"])
            item = by_key.get(key)
            if item is None or entry["hash"] != digest or entry["src_fp"] != item.fingerprint:
                continue
            if not set(item.made) <= {tuple(m) for m in entry.get("made", [])}:  # a method added, a label changed
                continue
            files = [f for w in entry["windows"] for f in _window_files(w)]
            if any(f["out_fp"] != _stat(out / f["path"]) for f in files):
                continue
            if key not in best or entry["t"] >= best[key]["t"]:
                best[key] = entry
        except (KeyError, TypeError):
            continue
    return best


def _window_files(window: dict[str, Any]) -> list[dict[str, Any]]:
    """A journal window's file records: the window, its codec copies, its self-made fakes and theirs."""
    made = [f for m in window.get("made", []) for f in (m, *m.get("copies", []))]
    return [window, *window.get("copies", []), *made]


# ---------------------------------------------------------------- one clip -> files + entry


def _remove_stale_windows(out: Path, item: ClipItem, keep: int) -> None:
    """Delete window files ``keep``, ``keep + 1``, ... (and their codec copies) left by an earlier run
    with more windows."""
    k = keep
    while (out / item.rel_out(k)).exists():
        for stale in (out / item.split).glob(f"{glob.escape(item.id)}_w{k}.*png"):  # the window and its copies
            stale.unlink(missing_ok=True)
        k += 1


def _finish(item: ClipItem, clip: Clip, out: Path, digest: str) -> dict[str, Any]:
    """Write the clip's PNGs (atomically) and return its journal entry."""
    windows = []
    levels = dict(item.copies)

    def write(rel: str, png: bytes, **record: Any) -> dict[str, Any]:
        atomic_write_bytes(out / rel, png, durable=False)  # one sync at the end of _process
        return {**record, "path": rel, "out_fp": _stat(out / rel)}

    def write_copies(index: int, copies: dict[str, bytes], prefix: str = "") -> list[dict[str, Any]]:
        return [write(item.rel_out(index, prefix + codec), png, codec=codec, level=levels[codec])
                for codec, png in copies.items()]

    for w in clip.windows:
        # Copies and fakes first: the window's own file completes it.
        copies = write_copies(w.index, w.copies)
        made = [write(item.rel_out(w.index, f"made-{method}"), r.png, method=method,
                      copies=write_copies(w.index, r.copies, f"made-{method}."))
                for method, r in w.made.items()]
        windows.append(write(item.rel_out(w.index), w.png, window=w.index, start_s=w.start_s, end_s=w.end_s,
                             copies=copies, made=made))
    _remove_stale_windows(out, item, len(windows))
    return {
        "split": item.split, "Id": item.id, "status": clip.status, "note": clip.note,
        "duration_s": clip.duration_s, "src_rate": clip.src_rate, "src_channels": clip.src_channels,
        "windows": windows, "hash": digest, "src_fp": item.fingerprint, "t": time.time(),
        "made": [list(m) for m in item.made],
    }


def render_stream(items: list[ClipItem], cfg: Config) -> Iterator[tuple[ClipItem, Clip]]:
    """(item, rendered clip) in the order of ``items``; ``audio.workers`` processes, a bounded queue."""
    audio, allow_truncated = cfg.audio, cfg.data.allow_truncated
    if audio.workers <= 0:
        for item in items:
            yield item, render_clip(item.src, audio, allow_truncated, item.copies, item.made)
        return
    limit = 4 * audio.workers
    # The forkserver preloads only .audio (render_clip) and .workers (exit_with): nothing heavier.
    ctx = forkserver_context(["deepfake_pipeline.audio", "deepfake_pipeline.workers"])
    alive, keep_alive = lifeline(ctx)  # workers exit when keep_alive closes (with this process)
    try:
        with ProcessPoolExecutor(max_workers=audio.workers, mp_context=ctx, initializer=exit_with,
                                 initargs=(alive,)) as pool:
            queue: deque[tuple[ClipItem, Future]] = deque()
            for item in items:
                queue.append((item, pool.submit(render_clip, item.src, audio, allow_truncated, item.copies, item.made)))
                if len(queue) >= limit:
                    yield _result(*queue.popleft())
            while queue:
                yield _result(*queue.popleft())
    finally:
        keep_alive.close()
        alive.close()


def _result(item: ClipItem, future: Future) -> tuple[ClipItem, Clip]:
    try:
        return item, future.result()
    except BrokenProcessPool:
        # A decoder crash (a segfault in a codec, the OOM killer) takes a worker down with it.
        raise PipelineError(f"a worker process died while decoding {item.src} or a clip after it; the clips "
                            "finished so far are kept: rerun with --set audio.workers=0 to find the file") from None


# ---------------------------------------------------------------- the stage


@dataclass
class AudioSummary:
    processed: int = 0  # clips done by this call
    reused: int = 0  # clips of this shard already done with the same settings
    seconds: float = 0.0
    audio_seconds: float = 0.0  # playable length of the clips done by this call
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> clips/windows/silent/unreadable
    manifest: Path | None = None
    pending: int = 0  # clips of the requested splits not done yet (other shards)

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"prepare_audio: {self.processed} clip(s), {self.audio_seconds / 60:.1f} min of audio, in "
                 f"{self.seconds:.1f}s ({self.clips_per_s:.1f} clips/s), {self.reused} already done"]
        for split, c in self.counts.items():
            per = c["windows"] / c["window"] if c["window"] else 0.0
            parts.append(f"{split}: clips={c['clips']} windows={c['windows']} ({per:.1f}/clip) "
                         f"silent={c['silent']} unreadable={c['unreadable']}")
        parts.append(f"manifest {self.manifest}" if self.manifest else f"manifest pending: {self.pending} left")
        return " | ".join(parts)


def run_prepare_audio(cfg: Config, split: str | tuple[str, ...] = "all", shard: Shard | None = None,
                      force: bool = False, merge_only: bool = False) -> AudioSummary:
    """Window the clips of ``split`` that belong to ``shard``; rebuild faces.csv when complete."""
    check_audio_config(cfg)
    chosen = selected_splits(split)
    shard = shard or Shard()
    out = Path(cfg.audio.out)
    digest = settings_hash(cfg)
    all_items = plan_clips(cfg)  # validation before any work
    wanted = [it for it in all_items if it.split in chosen]
    summary = AudioSummary()

    if not merge_only:
        mine = wanted[shard.index::shard.count]
        with shard_journal(out, chosen, shard, force) as journal:
            atomic_write_text(out / "align_config.yaml", f"# prepare_audio settings hash: {digest}\n" + to_yaml(cfg))
            done = {} if force else valid_entries(out, mine, digest)
            todo = [it for it in mine if it.key not in done]
            summary.reused = len(mine) - len(todo)
            if todo:
                (out / MANIFEST_NAME).unlink(missing_ok=True)  # rebuilt once every clip is done
                log.info("prepare_audio shard %s: %d to do, %d already done (settings %s, %d samples per "
                         "window) -> %s", shard, len(todo), summary.reused, digest, window_samples(cfg.audio), out)
                start = time.perf_counter()
                summary.audio_seconds = _process(todo, cfg, out, digest, journal)
                summary.seconds = time.perf_counter() - start
                summary.processed = len(todo)

    entries = valid_entries(out, all_items, digest)
    complete = [s for s in SPLITS if all(it.key in entries for it in all_items if it.split == s)]
    summary.pending = sum(1 for it in wanted if it.key not in entries)
    for name in chosen:
        done_here = [entries[it.key] for it in wanted if it.split == name and it.key in entries]
        counter = Counter(e["status"] for e in done_here)
        counter.update(clips=len(done_here), windows=sum(len(e["windows"]) for e in done_here))
        summary.counts[name] = counter
    if summary.pending:
        if merge_only:
            raise PipelineError(f"{summary.pending} of {len(wanted)} clip(s) of {', '.join(chosen)} are not "
                                f"prepared with these settings yet: run prepare_audio.py without --merge-only")
        log.info("faces.csv not written yet: %d clip(s) left to other shards", summary.pending)
        print(summary.line(), flush=True)
        return summary

    manifest = build_manifest([it for it in all_items if it.split in complete], entries, out)
    summary.manifest = out / MANIFEST_NAME
    save_csv(summary.manifest, manifest)
    missing = [s for s in SPLITS if s not in complete]
    if missing:
        log.warning("faces.csv has no rows for split(s) %s yet (run with --split all)", ", ".join(missing))
    print(summary.line(), flush=True)
    _check_unreadable(manifest, cfg)
    return summary


def _process(todo: list[ClipItem], cfg: Config, out: Path, digest: str, journal: Journal) -> float:
    """Render (in workers), write and journal every clip of ``todo``; returns the audio seconds."""
    from tqdm import tqdm

    total = 0.0
    with tqdm(total=len(todo), unit="clip", desc="prepare_audio", disable=not show_progress(cfg.run.progress)) as bar:
        for item, clip in render_stream(todo, cfg):
            journal.append(_finish(item, clip, out, digest))  # only after its PNGs are in place
            failpoint("audio_clip")
            total += clip.duration_s or 0.0
            bar.update(1)
    os.sync()  # the windows were written without a sync each; one for all (see images.atomic_path)
    return total


def build_manifest(items: list[ClipItem], entries: dict[tuple[str, str], dict[str, Any]], out: Path
                   ) -> pd.DataFrame:
    """faces.csv: a row per window in (split, Id, window) order, ``path`` as <audio.out>/<split>/<Id>_w<k>.png,
    ``copies`` its codec copies' paths joined by ";" (empty without) and ``copy_levels`` their drawn
    compression levels as ``codec:level`` in the same order; a clip without windows gets one
    row, window -1 and no path, its status and note saying why. A self-made fake's windows are rows
    of their own: Id ``<Id>~<method>``, ``made_from`` the source Id, ``made_by`` the method (both empty
    for the dataset's own clips): training labels them fake and keeps them in their source's fold."""
    rows = []
    for it in items:
        e = entries[it.key]
        common = {"Id": it.id, "split": it.split, "note": e["note"], "duration_s": e["duration_s"],
                  "src_rate": e["src_rate"], "src_channels": e["src_channels"], "settings_hash": e["hash"],
                  "made_from": "", "made_by": ""}
        if not e["windows"]:
            rows.append({**common, "window": -1, "status": e["status"], "path": "", "copies": "", "copy_levels": "",
                         "start_s": None, "end_s": None})
        made_rows = []
        wanted = {method for method, _ in it.made}
        for w in e["windows"]:
            place = {"window": w["window"], "status": "window", "start_s": w["start_s"], "end_s": w["end_s"]}
            rows.append({**common, **place, "path": str(out / w["path"]), **_copy_columns(w, out)})
            made_rows += [{**common, **place, "Id": f"{it.id}{MADE_SEPARATOR}{m['method']}", "made_from": it.id,
                           "made_by": m["method"], "note": f"self-made fake: {it.id} resynthesised by {m['method']}",
                           "path": str(out / m["path"]), **_copy_columns(m, out)}
                          for m in w.get("made", []) if m["method"] in wanted]
        rows += sorted(made_rows, key=lambda r: (r["Id"], r["window"]))
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("window", "src_rate", "src_channels"):
        frame[col] = frame[col].astype("Int64")
    return frame


def _copy_columns(record: dict[str, Any], out: Path) -> dict[str, str]:
    copies = record.get("copies", [])
    return {"copies": ";".join(str(out / c["path"]) for c in copies),
            "copy_levels": ";".join(f"{c['codec']}:{c.get('level', '')}" for c in copies)}


def _check_unreadable(manifest: pd.DataFrame, cfg: Config) -> None:
    """Exit code 2 (DataValidationError) above ``align.max_unreadable_share`` of the clips."""
    clips = manifest.drop_duplicates(["split", "Id"])
    bad = clips[clips["status"] == "unreadable"]
    if len(clips) == 0 or len(bad) == 0:
        return
    share = len(bad) / len(clips)
    log.warning("%d unreadable input clip(s) (%.2f%%), recorded in faces.csv", len(bad), 100 * share)
    if share > cfg.align.max_unreadable_share:
        problems = [
            f"{len(bad)} of {len(clips)} input clips ({share:.1%}) are unreadable, more than "
            f"align.max_unreadable_share={cfg.align.max_unreadable_share:.1%} (faces.csv lists them all)"
        ]
        problems += [f"{r.split}/{r.Id}: {r.note}" for r in bad.head(10).itertuples()]
        raise DataValidationError(problems)
