"""Competition scale: every stage's bookkeeping (the non-compute parts) at 5k, 20k and 58k training images.

The competition this pipeline targets had about 58,000 training and 20,000 test faces; the real datasets
here stop at 3,000. This harness builds synthetic Kaggle layouts of tiny noise JPEGs (24x24, quality 90)
under ``--root`` (never inside the repository; reused while their counts match) and times, per scale:

  validation    dataset.load_layout(check_images=True): listing, the CSV checks, every file's header
  align         align.run_align with align.enabled=false (no MTCNN: the whole image letterboxed to
                align.size): decode, crop, atomic JPEG write, the journal, the manifest
  resume        run_align again with everything done (must process nothing)
  merge         run_align(merge_only=True): faces.csv rebuilt from the journal
  folds         finetune.prepare_folds(force=True): layout, make_folds, the folds hash, folds.csv
  fingerprint   artifacts.faces_fingerprint(artifacts.load_faces(cfg))
  loader_w0/_w2 fold_rows -> FaceDataset over every training face -> EpochBatches + make_loader as
                engine.TrainLoop builds them, until the first batch is out (run.workers 0 and 2)
  diamonds      diamonds.mine, per fold (5 selections), up to the diamonds CSV
  predict_csv   predict.run_predict: per_id, test_probs.csv, submission.write_submission

diamonds and predict_csv run the stages' own functions with the model compute replaced: the run's
``ensemble_logits`` returns random calibrated log-odds and every fold counts as finished, so what is
timed is everything around the models. Each measurement runs in a forked child (``_common.isolated``):
its peak RSS is the child's own; an idle forked child's peak (the interpreter and libraries, the floor
of every figure) is printed beside them. CPU seconds are the child's and its reaped children's (the
loader's workers; not alignment's, which a forkserver starts). Then, at the largest scale
(``--skip-kill`` to leave out), ``align_faces.py`` is killed with SIGKILL once about half of the
images are in its journal and rerun: nothing done before the kill may be redone or lost, and the
processes the killed run leaves behind are counted (and ended).

Run:  .venv/bin/python benchmarks/scale.py --scales 5000,20000,58000 --root /tmp/scale --json out.json
Growth exponent = log(t_large/t_small)/log(n_large/n_small) between the two largest scales; above
1.3 a part "grows faster than linear". Target: every part at most 60 s at 58k training images.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cpu_name, isolated, meta, parse_list, peak_memory_mb, write_json  # noqa: E402

from deepfake_pipeline import diamonds as diamonds_mod  # noqa: E402
from deepfake_pipeline import predict as predict_mod  # noqa: E402
from deepfake_pipeline.align import MANIFEST_NAME, read_journals, run_align  # noqa: E402
from deepfake_pipeline.artifacts import faces_fingerprint, fold_rows, load_faces, run_paths  # noqa: E402
from deepfake_pipeline.augment import train_jpeg  # noqa: E402
from deepfake_pipeline.config import Config, load_config, to_yaml  # noqa: E402
from deepfake_pipeline.dataset import FaceDataset, load_layout  # noqa: E402
from deepfake_pipeline.engine import EpochBatches, make_loader  # noqa: E402
from deepfake_pipeline.finetune import prepare_folds  # noqa: E402
from deepfake_pipeline.runtime import Runtime, derive_seed  # noqa: E402

COMPETITION_TRAIN, COMPETITION_TEST = 58_000, 20_000
TARGET_S = 60.0  # every bookkeeping part at the competition's scale
SUPERLINEAR = 1.3  # growth exponent above which a part "grows faster than linear"
CPU = torch.device("cpu")

# The harness's own settings; --config and then --set come on top of the schema, these last but --set.
HARNESS_SETS = [
    "align.enabled=false", "align.size=32", "align.workers=1", "run.workers=0", "run.progress=false",
    "run.device=cpu", "finetune.folds=5",
]


# ----------------------------------------------------------------------------- scales and layouts


@dataclass(frozen=True)
class Scale:
    """One synthetic competition: ``n_train`` labelled and ``n_test`` test images under ``root``."""

    n_train: int
    n_test: int
    root: Path

    @property
    def label(self) -> str:
        return scale_label(self.n_train)

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def faces(self) -> Path:
        return self.root / "faces"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def total(self) -> int:
        return self.n_train + self.n_test


def scale_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def make_scale(n_train: int, root: Path, test_ratio: float) -> Scale:
    return Scale(n_train, max(1, round(n_train * test_ratio)), root / f"n{n_train}")


def scale_config(scale: Scale, config: str | None, sets: list[str]) -> Config:
    """The pipeline config pointed at this scale's folders; the user's --set values win."""
    where = [f"data.root={scale.dataset}", f"align.out={scale.faces}", f"run.dir={scale.run}"]
    return load_config(config, ["run.name=scale", *HARNESS_SETS, *where, *sets])


def _count_files(folder: Path) -> int:
    if not folder.is_dir():
        return -1
    with os.scandir(folder) as entries:
        return sum(1 for _ in entries)


def make_layout(scale: Scale, size: int, quality: int, seed: int) -> dict[str, Any]:
    """train_images/, test_images/ (noise JPEGs) and train_solution.csv; reused when it matches.

    Written straight (not atomically) from one process: the layout is the input, not what is measured.
    A ``layout.json`` written last marks a finished layout, so a killed generation is redone.
    """
    from PIL import Image

    start = time.perf_counter()
    marker = scale.dataset / "layout.json"
    want = {"n_train": scale.n_train, "n_test": scale.n_test, "size": size, "quality": quality, "seed": seed}
    train_dir, test_dir = scale.dataset / "train_images", scale.dataset / "test_images"
    with contextlib.suppress(OSError, ValueError):
        if (json.loads(marker.read_text()) == want and _count_files(train_dir) == scale.n_train
                and _count_files(test_dir) == scale.n_test):
            return {"reused": True, "seconds": time.perf_counter() - start}
    shutil.rmtree(scale.dataset, ignore_errors=True)
    train_dir.mkdir(parents=True)
    test_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    numbers = np.unique(rng.integers(0, 2**62, size=scale.total + 64))
    rng.shuffle(numbers)  # Kaggle-like: random hex Ids, the CSV in no particular order
    ids = [f"{x:016x}" for x in numbers[:scale.total]]
    if len(ids) < scale.total:
        raise RuntimeError("could not draw enough distinct Ids")
    chunk = 4096
    for first in range(0, scale.total, chunk):
        block = rng.integers(0, 256, size=(min(chunk, scale.total - first), size, size, 3), dtype=np.uint8)
        for offset, pixels in enumerate(block):
            i = first + offset
            folder = train_dir if i < scale.n_train else test_dir
            with open(folder / f"{ids[i]}.jpg", "wb") as fh:
                Image.fromarray(pixels).save(fh, format="JPEG", quality=quality)
    labels = rng.integers(0, 2, size=scale.n_train)
    labels[:2], labels[2:4] = 0, 1  # both classes, whatever the size
    pd.DataFrame({"Id": ids[:scale.n_train], "target_feature": labels}).to_csv(
        scale.dataset / "train_solution.csv", index=False)
    marker.write_text(json.dumps(want))
    return {"reused": False, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the measured parts


@dataclass
class Ctx:
    """What a part needs: the scale, its config, a seed for the stand-in logits."""

    scale: Scale
    cfg: Config
    seed: int


class CheckFailed(RuntimeError):
    """A part ran but did not do what it must (e.g. the resume scan redid images)."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def part_validation(ctx: Ctx) -> dict[str, Any]:
    layout = load_layout(ctx.cfg.data, check_images=True)
    _require(len(layout.train.frame) == ctx.scale.n_train and len(layout.test.frame) == ctx.scale.n_test,
             f"layout has {len(layout.train.frame)}/{len(layout.test.frame)} images")
    return {"warnings": len(layout.warnings)}


def clear_faces(ctx: Ctx) -> None:
    shutil.rmtree(ctx.cfg.align.out, ignore_errors=True)


def part_align(ctx: Ctx) -> dict[str, Any]:
    summary = run_align(ctx.cfg)
    _require(summary.processed == ctx.scale.total and summary.manifest is not None,
             f"aligned {summary.processed} of {ctx.scale.total}, manifest {summary.manifest}")
    return {"processed": summary.processed, "process_s": round(summary.seconds, 3)}


def part_resume(ctx: Ctx) -> dict[str, Any]:
    summary = run_align(ctx.cfg)
    _require(summary.processed == 0, f"the resume scan redid {summary.processed} image(s)")
    _require(summary.reused == ctx.scale.total, f"reused {summary.reused} of {ctx.scale.total}")
    return {"processed": summary.processed, "reused": summary.reused}


def part_merge(ctx: Ctx) -> dict[str, Any]:
    summary = run_align(ctx.cfg, merge_only=True)
    _require(summary.manifest is not None and summary.processed == 0, "merge-only wrote no manifest")
    return {}


def part_folds(ctx: Ctx) -> dict[str, Any]:
    folds = prepare_folds(ctx.cfg, run_paths(ctx.cfg), Runtime(CPU), force=True)
    _require(len(folds) == ctx.scale.n_train and set(folds["fold"]) == set(range(ctx.cfg.finetune.folds)),
             "folds.csv does not cover every labelled row")
    return {}


def part_fingerprint(ctx: Ctx) -> dict[str, Any]:
    return {"fingerprint": faces_fingerprint(load_faces(ctx.cfg))}


def _loader_part(workers: int) -> Callable[[Ctx], dict[str, Any]]:
    def part(ctx: Ctx) -> dict[str, Any]:
        """As finetune.train_fold (fold 0) and TrainLoop.__init__/run build them, every training face."""
        cfg = ctx.cfg
        folds = pd.read_csv(run_paths(cfg).folds_csv, dtype={"Id": str})
        train_rows, val_rows = fold_rows(folds, load_faces(cfg), 0)
        rows = pd.concat([train_rows, val_rows], ignore_index=True)
        dataset = FaceDataset(list(rows["path"]), rows["target"].to_numpy(),
                              jpeg=train_jpeg(cfg.finetune.aug, derive_seed(cfg.run.seed, "fold", 0)))
        runtime = Runtime(CPU)
        seed = cfg.run.seed + 1000  # fold 0's LoopSpec.seed
        batches = EpochBatches(dataset, cfg.finetune.batch_size, runtime, seed)
        loader = make_loader(dataset, batches, runtime, workers, derive_seed(seed, "loader"))
        batches.set_position(0, 0)
        iterator = iter(loader)
        images, _, _ = next(iterator)
        _require(len(dataset) == ctx.scale.n_train, f"dataset of {len(dataset)} faces")
        return {"batch": list(images.shape), "_cleanup": iterator}

    return part


def _fake_logits(seed: int) -> Callable[..., np.ndarray]:
    """Stands in for trained.ensemble_logits: random calibrated log-odds (N(0, 3.5): about 13% of
    them past the diamonds thresholds), one row per fold with ``per_fold``."""

    def ensemble_logits(cfg: Config, paths: Any, runtime: Any, folds: list[int], image_paths: list[str],
                        per_fold: bool = False, **_: Any) -> np.ndarray:
        rng = np.random.default_rng(seed)
        matrix = rng.normal(0.0, 3.5, size=(len(folds), len(image_paths)))
        return matrix if per_fold else matrix.mean(axis=0)

    return ensemble_logits


def _all_folds(paths: Any, n_folds: int) -> list[int]:
    return list(range(n_folds))


def part_diamonds(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    paths = run_paths(cfg)
    out = paths.root / "train_diamond.csv"
    with mock.patch.object(diamonds_mod, "ensemble_logits", _fake_logits(ctx.seed)), \
            mock.patch.object(diamonds_mod, "finished_folds", _all_folds):
        summary = diamonds_mod.mine(cfg, paths, cfg.diamonds, out, config_hash="scale")
    _require(summary.out == out and len(summary.kept_per_fold) == cfg.finetune.folds, "no per-fold diamonds")
    return {"mined": summary.total}


def write_threshold(ctx: Ctx) -> None:
    path = run_paths(ctx.cfg).threshold_json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"threshold": 0.5, "oof_fake_share": 0.5}))


def part_predict_csv(ctx: Ctx) -> dict[str, Any]:
    paths = run_paths(ctx.cfg)
    with mock.patch.object(predict_mod, "ensemble_logits", _fake_logits(ctx.seed)), \
            mock.patch.object(predict_mod, "finished_folds", _all_folds), \
            mock.patch.object(predict_mod, "oof_is_current", lambda cfg, paths: True):
        predict_mod.run_predict(ctx.cfg, Runtime(CPU), paths)
    rows = len(pd.read_csv(paths.submission_csv, dtype={"Id": str}))
    _require(rows == ctx.scale.n_test, f"submission has {rows} rows")
    return {}


@dataclass(frozen=True)
class Part:
    name: str
    label: str
    run: Callable[[Ctx], dict[str, Any]]
    needs: tuple[str, ...] = ()  # "faces": a finished faces.csv; "folds": folds.csv
    setup: Callable[[Ctx], None] | None = None  # in the child, before the clock starts
    provides: tuple[str, ...] = ()


PARTS: tuple[Part, ...] = (
    Part("validation", "2. validation (load_layout, headers)", part_validation),
    Part("align", "3. alignment bookkeeping (run_align, enabled=false)", part_align, setup=clear_faces,
         provides=("faces",)),
    Part("resume", "4. resume scan (all done)", part_resume, needs=("faces",)),
    Part("merge", "5. manifest merge (merge_only)", part_merge, needs=("faces",)),
    Part("folds", "6. folds (prepare_folds: make_folds, hash, CSV)", part_folds, provides=("folds",)),
    Part("fingerprint", "7. faces fingerprint", part_fingerprint, needs=("faces",)),
    Part("loader_w0", "8. dataset + loader to 1st batch, 0 workers", _loader_part(0), needs=("faces", "folds")),
    Part("loader_w2", "8. dataset + loader to 1st batch, 2 workers", _loader_part(2), needs=("faces", "folds")),
    Part("diamonds", "9. diamonds (5 per-fold selections + CSV)", part_diamonds, needs=("faces", "folds")),
    Part("predict_csv", "10. prediction CSVs (per_id, test_probs, submission)", part_predict_csv,
         needs=("faces",), setup=write_threshold),
)
PART_NAMES = [p.name for p in PARTS]


def _quiet_child(log_path: Path) -> None:
    """Send the child's stdout/stderr (the stages' prints, logs) to a file: the table stays readable."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(part: Part, ctx: Ctx, threads: int, profile_dir: str | None) -> dict[str, Any]:
    """In the forked child: setup, then the timed part; wall and CPU seconds, peak RSS."""
    torch.set_num_threads(threads)
    _quiet_child(ctx.scale.logs / f"{part.name}.log")
    if part.setup is not None:
        part.setup(ctx)
    profiler = cProfile.Profile() if profile_dir else None
    cpu0 = _cpu_s()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    details = part.run(ctx)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - start
    cleanup = details.pop("_cleanup", None)
    del cleanup  # DataLoader workers shut down here, after the clock (their RSS then counts as children's)
    cpu = _cpu_s() - cpu0
    if profiler is not None and profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / f"{part.name}-{ctx.scale.n_train}.prof"))
    rss, _ = peak_memory_mb(CPU)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": rss, "children_peak_rss_mib": children,
            **details}


def _prepare_faces(ctx: Ctx) -> dict[str, Any]:
    _quiet_child(ctx.scale.logs / "prepare.log")
    summary = run_align(ctx.cfg)
    return {"processed": summary.processed}


def _prepare_folds(ctx: Ctx) -> dict[str, Any]:
    _quiet_child(ctx.scale.logs / "prepare.log")
    prepare_folds(ctx.cfg, run_paths(ctx.cfg), Runtime(CPU), force=True)
    return {}


def _idle_child() -> dict[str, Any]:
    """A forked child that does nothing: its peak RSS is the floor under every part's figure."""
    return {"peak_rss_mib": peak_memory_mb(CPU)[0]}


# ----------------------------------------------------------------------------- kill and resume


_SUMMARY = re.compile(r"align: (\d+) image\(s\) in ([0-9.]+)s .*?, (\d+) already done")


def _align_cmd(config_path: Path) -> list[str]:
    return [sys.executable, str(REPO / "align_faces.py"), "--config", str(config_path), "--log-level", "WARNING"]


def _cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _journal_lines(path: Path, state: dict[str, int]) -> int:
    """Newlines in the journal so far, reading only what was appended since the last call."""
    try:
        with open(path, "rb") as fh:
            fh.seek(state.get("offset", 0))
            data = fh.read()
    except FileNotFoundError:
        return 0
    state["offset"] = state.get("offset", 0) + len(data)
    state["lines"] = state.get("lines", 0) + data.count(b"\n")
    return state["lines"]


def _group_members(pgid: int) -> list[dict[str, Any]]:
    """Live processes of process group ``pgid`` (pid, command, RSS MiB), from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            continue
        members.append({"pid": int(stat.parent.name), "cmd": cmd[:120], "rss_mib": round(rss)})
    return members


def kill_and_resume(ctx: Ctx, share: float) -> dict[str, Any]:
    """align_faces.py from scratch, SIGKILL once ``share`` of the images are journaled, rerun, check."""
    from PIL import Image

    scale, cfg = ctx.scale, ctx.cfg
    out = Path(cfg.align.out)
    _quiet_child(scale.logs / "kill.log")
    shutil.rmtree(out, ignore_errors=True)
    config_path = scale.root / "scale_align.yaml"
    config_path.write_text(to_yaml(cfg))
    journal = out / ".journal" / "train-test-0-of-1.jsonl"
    target = int(scale.total * share)
    log_file = open(scale.logs / "kill-first-run.log", "wb")  # noqa: SIM115 (closed below)
    start = time.perf_counter()
    # Its own session: the forkserver and DataLoader worker it starts can be found (and ended) afterwards.
    proc = subprocess.Popen(_align_cmd(config_path), cwd=REPO, env=_cli_env(), stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    state: dict[str, int] = {}
    while proc.poll() is None and _journal_lines(journal, state) < target:
        time.sleep(0.02)
    finished_early = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)  # the main process only, as an OOM kill would
    proc.wait()
    first_s = time.perf_counter() - start
    log_file.close()
    deadline = time.monotonic() + 10  # its workers notice within a second that the stage is gone
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = _group_members(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # they would otherwise linger, holding their memory
    _require(not finished_early, f"align_faces.py ended (code {proc.returncode}) before it could be killed")

    done_before = {(e["split"], e["Id"]): e for e in read_journals(out)}
    mtimes = {k: (out / e["path"]).stat().st_mtime_ns for k, e in done_before.items() if e["path"]}
    temps_after_kill = sum(1 for _ in out.rglob(".*.tmp"))
    manifest_after_kill = (out / MANIFEST_NAME).exists()

    start = time.perf_counter()
    rerun = subprocess.run(_align_cmd(config_path), cwd=REPO, env=_cli_env(), capture_output=True, text=True)
    second_s = time.perf_counter() - start
    (scale.logs / "kill-second-run.log").write_text(rerun.stdout + rerun.stderr)
    _require(rerun.returncode == 0, f"the rerun failed (code {rerun.returncode}): {rerun.stderr[-500:]}")
    found = _SUMMARY.search(rerun.stdout)
    _require(found is not None, f"no summary line in the rerun's output: {rerun.stdout[-500:]}")
    assert found is not None
    processed, stage_s, reused = int(found[1]), float(found[2]), int(found[3])

    layout = load_layout(cfg.data, check_images=False)
    expected = sorted([("train", i) for i in layout.train.frame["Id"]] + [("test", i) for i in layout.test.frame["Id"]])
    faces = pd.read_csv(out / MANIFEST_NAME, dtype={"Id": str}, keep_default_na=False)
    keys = list(zip(faces["split"], faces["Id"]))
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    journal_counts = pd.Series([(e["split"], e["Id"]) for e in lines]).value_counts()
    undecodable = 0
    for path in faces["path"]:
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, ValueError):
            undecodable += 1
    rewritten = sum((out / done_before[k]["path"]).stat().st_mtime_ns != m for k, m in mtimes.items())
    checks = {
        "not_redone": processed == scale.total - len(done_before) and reused == len(done_before),
        "journaled_once": bool((journal_counts == 1).all()) and len(journal_counts) == scale.total,
        "kept_files_untouched": rewritten == 0,
        "every_id_once": sorted(keys) == expected,
        "every_jpeg_decodes": undecodable == 0,
        "no_temp_files_left": not any(out.rglob(".*.tmp")),
        "no_manifest_while_incomplete": not manifest_after_kill,
    }
    return {
        "n_train": scale.n_train, "n_test": scale.n_test, "images": scale.total,
        "done_before_kill": len(done_before), "first_run_s": first_s, "second_run_s": second_s,
        "second_run_processed": processed, "second_run_reused": reused, "second_run_stage_s": stage_s,
        "temp_files_after_kill": temps_after_kill, "rewritten_after_resume": rewritten,
        "orphans_after_kill": orphans,
        "undecodable": undecodable, "checks": checks, "ok": all(checks.values()),
    }


# ----------------------------------------------------------------------------- report


def growth_exponent(times: dict[int, float]) -> float | None:
    """log(t_b/t_a)/log(n_b/n_a) between the two largest scales measured."""
    ok = sorted((n, t) for n, t in times.items() if t is not None and t > 0)
    if len(ok) < 2:
        return None
    (na, ta), (nb, tb) = ok[-2], ok[-1]
    return math.log(tb / ta) / math.log(nb / na)


def at_competition(times: dict[int, float | None]) -> float | None:
    """Seconds at the competition's 58k training images, when that scale was measured.

    Not extrapolated: at small scales fixed costs (imports, a forkserver start) dominate, and a
    linear projection of them would flag parts that are flat."""
    return times.get(COMPETITION_TRAIN)


def summarize(results: dict[str, dict[int, dict[str, Any]]], scales: list[int]) -> list[dict[str, Any]]:
    rows = []
    for part in PARTS:
        if part.name not in results:
            continue
        per = results[part.name]
        times = {n: per[n].get("seconds") for n in scales if n in per}
        exponent = growth_exponent(times)
        at58 = at_competition(times)
        flags = []
        if exponent is not None and exponent > SUPERLINEAR:
            flags.append("grows faster than linear")
        if at58 is not None and at58 > TARGET_S:
            flags.append(f"over {TARGET_S:.0f} s at 58k")
        errors = [f"{scale_label(n)}: {per[n]['error']}" for n in scales if n in per and per[n].get("error")]
        flags += errors
        rows.append({"part": part.name, "label": part.label, "seconds": times,
                     "cpu_seconds": {n: per[n].get("cpu_seconds") for n in scales if n in per},
                     "peak_rss_mib": {n: per[n].get("peak_rss_mib") for n in scales if n in per},
                     "exponent": exponent, "at_58k_s": at58, "flags": flags})
    return rows


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], scales: list[int]) -> str:
    heads = ["part", *[f"s @{scale_label(n)}" for n in scales], f"CPU s @{scale_label(scales[-1])}",
             *[f"peak RSS MiB @{scale_label(n)}" for n in scales], "exponent", "flags"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["label"], *[_num(r["seconds"].get(n)) for n in scales], _num(r["cpu_seconds"].get(scales[-1])),
                 *[_num(r["peak_rss_mib"].get(n), 0) for n in scales], _num(r["exponent"]),
                 "; ".join(r["flags"]) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    totals = [sum(r["seconds"].get(n) or 0.0 for r in rows) for n in scales]
    cpu_total = sum(r["cpu_seconds"].get(scales[-1]) or 0.0 for r in rows)
    lines.append("| **total** | " + " | ".join(f"**{t:.2f}**" for t in totals) + f" | **{cpu_total:.2f}** | "
                 + " | ".join("" for _ in scales) + f" | {_num(growth_exponent(dict(zip(scales, totals))))} | |")
    return "\n".join(lines)


def kill_text(kill: dict[str, Any] | None) -> str:
    if not kill:
        return "Kill and resume: not run."
    if kill.get("error"):
        return f"Kill and resume: ERROR {kill['error']}"
    failed = [k for k, v in kill["checks"].items() if not v]
    return (f"Kill and resume at {scale_label(kill['n_train'])} ({kill['images']} images): align_faces.py killed "
            f"(SIGKILL) after {kill['done_before_kill']} journaled images, first run {kill['first_run_s']:.1f} s; "
            f"the rerun took {kill['second_run_s']:.1f} s ({kill['second_run_stage_s']:.1f} s in the stage) and "
            f"processed {kill['second_run_processed']} = the {kill['images'] - kill['done_before_kill']} left, "
            f"reused {kill['second_run_reused']}; temp files after the kill {kill['temp_files_after_kill']}; "
            f"{_orphans_text(kill.get('orphans_after_kill') or [])}. "
            + ("All checks passed: " + ", ".join(kill["checks"]) if not failed else "FAILED: " + ", ".join(failed))
            + ".")


def _orphans_text(orphans: list[dict[str, Any]]) -> str:
    if not orphans:
        return "no process of the killed run was left"
    rss = sum(o["rss_mib"] for o in orphans)
    kinds = sorted({"forkserver or its DataLoader worker" if "forkserver" in o["cmd"] else "resource tracker"
                    if "resource_tracker" in o["cmd"] else o["cmd"].split(" ")[0] for o in orphans})
    return (f"{len(orphans)} process(es) of the killed run outlived it ({', '.join(kinds)}; {rss} MiB RSS in all), "
            "ended by the harness")


def projection_text(rows: list[dict[str, Any]], scales: list[int]) -> str:
    largest = scales[-1]
    values = [(r["label"], r["seconds"].get(largest)) for r in rows if r["seconds"].get(largest) is not None]
    total = sum(v for _, v in values)
    if not values:
        return ""
    worst = max(values, key=lambda x: x[1])
    if largest != COMPETITION_TRAIN:
        return (f"The competition's scale ({COMPETITION_TRAIN:,} training / {COMPETITION_TEST:,} test faces) was not "
                f"measured in this run; at {largest:,} training images these parts took {total:.1f} s in all on this "
                f"CPU (largest: {worst[0]}, {worst[1]:.1f} s).")
    return (f"At the original competition's scale ({COMPETITION_TRAIN:,} training / {COMPETITION_TEST:,} test faces) "
            f"the bookkeeping of these parts took {total:.0f} s in all on this CPU (measured, wall; the largest "
            f"part: {worst[0]}, {worst[1]:.0f} s). These are seconds on this CPU only: GPU epoch times at that scale "
            "were not measured, so no share of one is claimed.")


def append_results(path: Path, info: dict[str, Any], table_md: str, kill: dict[str, Any] | None,
                   rows: list[dict[str, Any]], layout_note: str) -> None:
    section = [
        "", "## Competition scale (bookkeeping)", "",
        f"Date {info['date']}; device: {info['device']}; load average {info['load_start']:.2f} at the start, "
        f"{info['load_end']:.2f} at the end (shared machine); torch {info['torch']}, Python {info['python']}.",
        f"Command: `{info['command']}`", "",
        f"Synthetic Kaggle layouts ({layout_note}); align.enabled=false, align.size=32, align.workers=1: the stages' "
        "own machinery, no model compute (diamonds and prediction use random calibrated log-odds in place of the "
        f"fold models). Seconds are wall time, the fastest of {info['repeats']} run(s); peak RSS is the measuring "
        f"child's (an idle forked child: {info['idle_child_rss_mib']:.0f} MiB). Exponent: growth "
        f"between the two largest scales; > {SUPERLINEAR} is flagged, and so is > {TARGET_S:.0f} s at 58k.", "",
        table_md, "", kill_text(kill), "", projection_text(rows, info["scales"]), "",
    ]
    with open(path, "a") as fh:
        fh.write("\n".join(section))
    print(f"results -> {path}")


# ----------------------------------------------------------------------------- main


def run_part(part: Part, ctx: Ctx, args: argparse.Namespace) -> dict[str, Any]:
    """``args.repeats`` isolated runs; the fastest run's figures, the largest peak RSS of all."""
    runs = [isolated(measure, part, ctx, args.threads, args.profile, fork=True) for _ in range(args.repeats)]
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"], "traceback": runs[0].get("traceback")}
    best = dict(min(good, key=lambda r: r["seconds"]))
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in good)
    best["all_seconds"] = [r["seconds"] for r in good]
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="5000,20000,58000", help="training images per scale (comma-separated)")
    p.add_argument("--test-ratio", type=float, default=COMPETITION_TEST / COMPETITION_TRAIN,
                   help="test images per training image (default: the competition's 20k/58k)")
    p.add_argument("--root", default="/tmp/scale", help="where the layouts and outputs live (not in the repo)")
    p.add_argument("--parts", default=",".join([*PART_NAMES, "kill"]),
                   help=f"subset of {','.join([*PART_NAMES, 'kill'])}")
    p.add_argument("--skip-kill", action="store_true", help="leave out the kill-and-resume check")
    p.add_argument("--kill-share", type=float, default=0.5, help="kill once this share of images is journaled")
    p.add_argument("--repeats", type=int, default=1, help="isolated runs per part and scale (the fastest counts)")
    p.add_argument("--image-size", type=int, default=24, help="side of the synthetic noise JPEGs")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the synthetic images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one: a shared 2-core machine)")
    p.add_argument("--config", default=None, help="YAML config (default: the built-in schema)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, applied after the harness's own (e.g. align.workers=2)")
    p.add_argument("--profile", default=None, metavar="DIR", help="cProfile each part into DIR/<part>-<n>.prof (main thread only: use py-spy for threads)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--results", default=None, metavar="FILE", help="append a markdown section to FILE")
    args = p.parse_args()

    root = Path(args.root).resolve()
    if root == REPO or REPO in root.parents:
        p.error(f"--root {root} is inside the repository; put the data elsewhere (e.g. /tmp/scale)")
    scales = sorted(parse_list(args.scales, int))
    chosen = parse_list(args.parts)
    unknown = sorted(set(chosen) - {*PART_NAMES, "kill"})
    if unknown or not scales or min(scales) < 10:
        p.error(f"unknown part(s) {unknown}" if unknown else "--scales: at least 10 training images each")
    parts = [part for part in PARTS if part.name in chosen]
    do_kill = "kill" in chosen and not args.skip_kill
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    info = {**meta(CPU), "device": f"{os.cpu_count()}-core CPU ({cpu_name()}), {args.threads} torch thread(s)",
            "load_start": os.getloadavg()[0], "repeats": args.repeats, "scales": scales,
            "idle_child_rss_mib": isolated(_idle_child, fork=True).get("peak_rss_mib", float("nan"))}
    print(f"competition-scale bookkeeping: scales {', '.join(scale_label(n) for n in scales)} training images, "
          f"test = {args.test_ratio:.4f} x train; {info['device']}; load avg {info['load_start']:.2f}")
    print(f"peak RSS = the measuring child's; an idle forked child peaks at {info['idle_child_rss_mib']:.0f} MiB")

    results: dict[str, dict[int, dict[str, Any]]] = {part.name: {} for part in parts}
    layouts: dict[int, dict[str, Any]] = {}
    contexts: dict[int, Ctx] = {}
    for n in scales:
        scale = make_scale(n, root, args.test_ratio)
        ctx = Ctx(scale, scale_config(scale, args.config, args.overrides), args.seed)
        contexts[n] = ctx
        made = isolated(make_layout, scale, args.image_size, args.quality, args.seed, fork=True)
        if "error" in made:
            print(f"layout {scale.dataset}: {made['error']}", file=sys.stderr)
            return 1
        layouts[n] = made
        print(f"\n[{scale.label}] {scale.n_train} train + {scale.n_test} test images in {scale.dataset}: "
              f"{'reused' if made['reused'] else 'written'} in {made['seconds']:.1f} s", flush=True)
        ready: set[str] = set()
        for part in parts:
            for need in part.needs:
                if need not in ready:
                    prep = isolated(_prepare_faces if need == "faces" else _prepare_folds, ctx, fork=True)
                    if "error" in prep:
                        print(f"  (preparing {need} failed: {prep['error']})", flush=True)
                    ready.add(need)
            res = run_part(part, ctx, args)
            results[part.name][n] = res
            if "error" in res:
                print(f"  {part.name:12s} ERROR {res['error']}", flush=True)
                ready.difference_update(part.provides)
                continue
            ready.update(part.provides)
            extra = ", ".join(f"{k} {res[k]}" for k in ("processed", "process_s", "reused", "mined") if k in res)
            print(f"  {part.name:12s} {res['seconds']:8.2f} s  CPU {res['cpu_seconds']:8.2f} s  "
                  f"peak RSS {res['peak_rss_mib']:6.0f} MiB  {extra}", flush=True)

    kill = None
    if do_kill:
        largest = contexts[scales[-1]]
        print(f"\n[{largest.scale.label}] kill align_faces.py at {args.kill_share:.0%} and resume ...", flush=True)
        kill = isolated(kill_and_resume, largest, args.kill_share, fork=True)
    info["load_end"] = os.getloadavg()[0]

    rows = summarize(results, scales)
    table_md = markdown_table(rows, scales) if rows else "(no part measured)"
    print("\n" + table_md + "\n")
    print(kill_text(kill))
    print(projection_text(rows, scales))
    layout_note = (f"{args.image_size}x{args.image_size} noise JPEGs at quality {args.quality}; test = "
                   f"{args.test_ratio:.4f} x train: " + ", ".join(f"{scale_label(n)} = {n}+{contexts[n].scale.n_test}"
                                                                 for n in scales))
    payload = {**info, "layout": layout_note, "layouts": {str(n): layouts[n] for n in scales},
               "parts": [{k: ({str(n): x for n, x in v.items()} if isinstance(v, dict) else v) for k, v in r.items()}
                         for r in rows],
               "raw": {name: {str(n): res for n, res in per.items()} for name, per in results.items()},
               "kill": kill, "target_s": TARGET_S, "superlinear_exponent": SUPERLINEAR}
    write_json(args.json, payload)
    if args.results:
        append_results(Path(args.results), info, table_md, kill, rows, layout_note)
    failed = any("error" in res for per in results.values() for res in per.values())
    failed = failed or (kill is not None and (bool(kill.get("error")) or not kill.get("ok")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
