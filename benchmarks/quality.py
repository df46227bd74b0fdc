"""Detection quality on a real dataset: stage 1 -> SSL -> fine-tune -> predict, scored on the test labels.

Faces (``align_faces.py`` as stage 1) or speech (``data.modality: audio``, ``prepare_audio.py``; e.g.
``python benchmarks/quality.py yourtts --config configs/audio.yaml``): the harness is the same.

    python benchmarks/quality.py lfw_swap --cross rfff --config configs/quality_cpu.yaml --tag lfw-base
    python benchmarks/quality.py lfw_swap --cross rfff --set finetune.aug.sbi=0.5 --tag lfw-sbi

DATASET (and OTHER) is a folder in the project's Kaggle layout with a ``test_solution.csv`` answer key,
or the name of one under ``--datasets`` (default ``../shared/datasets``); it is read in place as
``data.root``, never copied. Each stage runs in this process through the same library calls as its
CLI (``align.run_align`` for ``align_faces.py``, ``stages.run_stages`` for ``train.py --stage
ssl|finetune|predict``), with the same config file and ``--set`` overrides, logged under
``<scratch>/runs/<tag>/logs/``; one interpreter start instead of five (on a busy CPU importing torch
alone takes tens of seconds). Then the submission and test probabilities are scored against
``test_solution.csv`` with
``score.score_files`` (AUC, F1, accuracy; F1 and accuracy at the pooled-OOF threshold). With
``--cross OTHER`` OTHER's test images are aligned with the same settings and predicted by the same
fold models (``trained.ensemble_logits``, same TTA, calibration and threshold) and scored against OTHER's labels.

Scratch layout (``--scratch``, default /tmp/quality, outside the repository):
``faces/<dataset>-<align settings hash>/`` aligned faces, shared by every run with the same alignment
settings (the align stage then only checks them), and ``runs/<tag>/`` the run directory, logs,
``cross-<other>/`` and ``quality.json``. An SSL encoder finished by another run with the same SSL
settings and faces is reused (``finetune.ssl_encoder``; ``--no-reuse-ssl`` trains a new one).
Speech: ``made_cache/`` the self-made fakes stage 1 makes (``audio.made_cache``, in place of the
config's own unless ``--set`` names one), ``made_features/`` the baseline's features of them, both
shared by every run on the same clips.

Where the recipe starts from pretrained weights (``model.weights``), the frozen-feature probe
(``frozen_probe.py``: the same backbone untouched, multi-level pooled features, logistic regression)
runs beside it the same way, with its out-of-fold AUC on the run's own folds: if fine-tuning does not
beat it, fine-tuning adds nothing. Like the baseline it is a reference, never an ensemble member.

The classic spectral baseline (``spectral_baseline.py``: radial FFT log power + logistic regression,
Durall et al. 2020) runs in the same invocation on the same split and is scored the same way, twice:
on the pipeline's aligned faces and on the raw images. It is a reference, never part of the pipeline.
AUCs carry their standard error (Hanley & McNeil).

Round 2: ``--diamonds-from TAG`` mines diamonds from the finished run TAG (``make_diamonds.py``'s
code, per fold by default, the config's ``diamonds`` thresholds) and trains this run with them
(``data.pseudo_labels``; TAG's SSL encoder when the recipe uses one). The row says how many rows were
mined and how many of them are correct (the harness knows the test labels; the pipeline never sees them).

One result row per run goes to ``--results`` (default benchmarks/RESULTS.md) under the heading
``## Detection quality``: a markdown table whose heading and header are written once.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _common import cpu_name  # noqa: E402

from deepfake_pipeline.cli import setup_logging  # noqa: E402
from deepfake_pipeline.config import Config, load_config  # noqa: E402
from deepfake_pipeline.errors import PipelineError  # noqa: E402

HEADING = "## Detection quality"
PREAMBLE = """\
Whole-pipeline quality (stage 1 -> SSL -> fine-tune -> predict) on the real datasets of
`../shared/datasets` (see the README there), one row per `benchmarks/quality.py` run: test AUC (with
its standard error), F1 and accuracy scored against the dataset's `test_solution.csv` with
`deepfake_pipeline.score` (F1 and accuracy at the pooled out-of-fold threshold); *cross* = the same
fold models on the other dataset's test images. *baseline* = the classic spectral detector
(`benchmarks/spectral_baseline.py`) in the same invocation on the same split, on the aligned faces /
on the raw images (speech: `benchmarks/audio_baseline.py` on the raw clips). *probe* = the frozen
features of the run's own pretrained backbone (`model.weights`) and a logistic regression
(`benchmarks/frozen_probe.py`), same split, OOF on the run's folds; "-" where the recipe names no
weights. *pipeline s* = stage 1 + SSL + fine-tune + predict wall seconds (the budget); the
baseline, the probe and the cross-dataset scoring come on top."""
COLUMNS = [
    "date", "dataset", "cross", "tag", "config + overrides", "device", "backbone", "px", "epochs ssl/ft",
    "folds", "align s", "ssl s", "finetune s", "predict s", "pipeline s", "OOF AUC", "test AUC", "test F1",
    "test acc", "baseline test AUC (faces / raw)", "probe OOF AUC", "probe test AUC (faces / raw)", "cross AUC",
    "cross F1", "cross acc", "baseline cross AUC (faces / raw)", "probe cross AUC (faces / raw)", "notes", "command",
]
DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_SCRATCH = Path("/tmp/quality")


class QualityError(Exception):
    """A problem with the harness's inputs or a failed stage: one line, exit code 2."""


# ----------------------------------------------------------------------------- inputs


def resolve_dataset(name: str, datasets: Path) -> Path:
    """A dataset folder (a path, or a name under ``datasets``) with train and test answer keys."""
    path = Path(name)
    if not (path / "train_solution.csv").is_file():
        path = datasets / name
    if not (path / "train_solution.csv").is_file():
        raise QualityError(f"dataset {name!r}: no train_solution.csv in {name} or {datasets / name}")
    if not (path / "test_solution.csv").is_file():
        raise QualityError(f"dataset {name!r}: {path / 'test_solution.csv'} (the answer key) not found")
    return path.resolve()


def safe_tag(text: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._")
    if not tag:
        raise QualityError(f"--tag {text!r}: needs letters or digits")
    return tag


@dataclass
class Plan:
    """Paths and overrides of one run."""

    dataset: Path
    cross: Path | None
    config: Path
    user_sets: list[str]
    tag: str
    scratch: Path
    sets: list[str] = field(default_factory=list)  # user sets + the harness's paths
    cfg: Config | None = None
    faces: Path = Path()
    cross_faces: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.scratch / "runs" / self.tag

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"


def faces_dir(scratch: Path, dataset: Path, cfg: Config) -> Path:
    """Stage-1 output of ``dataset`` with ``cfg``'s stage-1 settings (shared by runs that match)."""
    from deepfake_pipeline.artifacts import stage1_hash

    return scratch / "faces" / f"{dataset.name}-{stage1_hash(cfg)}"


def stage1_key(cfg: Config) -> str:
    """The config key of stage 1's output folder."""
    return "audio.out" if cfg.data.modality == "audio" else "align.out"


def make_plan(args: argparse.Namespace) -> Plan:
    dataset = resolve_dataset(args.dataset, Path(args.datasets))
    cross = resolve_dataset(args.cross, Path(args.datasets)) if args.cross else None
    config = Path(args.config)
    tag = safe_tag(args.tag or default_tag(dataset, config, args.sets))
    plan = Plan(dataset, cross, config, list(args.sets), tag, Path(args.scratch).resolve())
    base = [*plan.user_sets, f"run.name={tag}", f"run.dir={plan.run_dir}", f"data.root={dataset}"]
    try:
        cfg = load_config(config, base)
    except PipelineError as exc:
        raise QualityError(str(exc)) from exc
    plan.faces = faces_dir(plan.scratch, dataset, cfg)
    plan.sets = [*base, f"{stage1_key(cfg)}={plan.faces}"]
    if cfg.data.modality == "audio" and not any(s.split("=", 1)[0].strip() == "audio.made_cache"
                                                for s in plan.user_sets):
        plan.sets.append(f"audio.made_cache={plan.scratch / 'made_cache'}")  # runs on the same clips share fakes
    plan.cfg = load_config(config, plan.sets)
    if cross is not None:
        plan.cross_faces = faces_dir(plan.scratch, cross, cfg)
    return plan


def default_tag(dataset: Path, config: Path, sets: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([str(config), sets]).encode()).hexdigest()[:8]
    return f"{dataset.name}-{config.stem}-{digest}"


# ----------------------------------------------------------------------------- stages


@contextlib.contextmanager
def stage_log(name: str, plan: Plan) -> Iterator[None]:
    """Log records and prints of the stage to ``<run>/logs/<name>.log`` (and the console)."""
    plan.logs.mkdir(parents=True, exist_ok=True)
    path = plan.logs / f"{name}.log"
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    with open(path, "a") as fh, contextlib.redirect_stdout(_Tee(sys.stdout, fh)):
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()


class _Tee:
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def run_stage(name: str, plan: Plan, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn``; a pipeline error becomes a QualityError naming the stage and log."""
    print(f"[quality] {name} (log {plan.logs / (name + '.log')})", flush=True)
    start = time.perf_counter()
    try:
        with stage_log(name, plan):
            result = fn()
    except PipelineError as exc:
        raise QualityError(f"stage {name} failed: {exc} (log {plan.logs / (name + '.log')})") from exc
    seconds = time.perf_counter() - start
    print(f"[quality] {name}: {seconds:.1f} s", flush=True)
    return seconds, result


def align(plan: Plan, sets: list[str], split: str = "all") -> Any:
    """Stage 1: ``align_faces.py`` (or ``prepare_audio.py``) ``--config CONFIG --set ... [--split test]``."""
    cfg = load_config(plan.config, sets)
    if cfg.data.modality == "audio":
        from deepfake_pipeline.audio_stage import run_prepare_audio

        return run_prepare_audio(cfg, split)
    from deepfake_pipeline.align import run_align

    return run_align(cfg, split)


def train(plan: Plan, sets: list[str], stage: str) -> int:
    """``train.py --config CONFIG --set ... --stage STAGE``."""
    from deepfake_pipeline.stages import run_stages

    return run_stages(load_config(plan.config, sets), stage)


def reusable_encoder(plan: Plan) -> Path | None:
    """The encoder of another run in the scratch folder with this run's SSL hash (same settings + faces)."""
    from deepfake_pipeline.artifacts import faces_fingerprint, load_faces
    from deepfake_pipeline.pretrain import ssl_hash

    assert plan.cfg is not None
    wanted = ssl_hash(plan.cfg, faces_fingerprint(load_faces(plan.cfg)))
    for done in sorted((plan.scratch / "runs").glob("*/ssl/done.json")):
        if done.parent.parent == plan.run_dir:
            continue
        try:
            record = json.loads(done.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        encoder = done.parent / "encoder.safetensors"
        if record.get("hash") == wanted and encoder.is_file():
            return encoder
    return None


# ----------------------------------------------------------------------------- scoring


def score_run(run_dir: Path, dataset: Path) -> dict[str, float]:
    from deepfake_pipeline.score import score_files

    return score_files(run_dir / "submission.csv", dataset / "test_solution.csv", run_dir / "test_probs.csv")


def predict_cross(plan: Plan) -> dict[str, float]:
    """The run's fold models on the cross dataset's aligned test faces; scores against its answer key."""
    import pandas as pd

    from deepfake_pipeline.artifacts import RunPaths, per_id_rows, usable_faces
    from deepfake_pipeline.config import DataConfig
    from deepfake_pipeline.dataset import load_layout
    from deepfake_pipeline.images import save_csv
    from deepfake_pipeline.score import score_files
    from deepfake_pipeline.shift import check_score_shift
    from deepfake_pipeline.submission import write_submission
    from deepfake_pipeline.trained import (
        ensemble_logits,
        finished_folds,
        inference_runtime,
        load_run_config,
        read_threshold,
        sigmoid,
    )

    assert plan.cross is not None and plan.cross_faces is not None
    cfg = load_run_config(plan.run_dir)
    paths = RunPaths(plan.run_dir)
    folds = finished_folds(paths, cfg.finetune.folds)
    runtime = inference_runtime(cfg.run.device, cfg.run.amp, cfg.run.channels_last)
    faces = usable_faces(pd.read_csv(plan.cross_faces / "faces.csv", dtype={"Id": str}, keep_default_na=False), "test")
    test_ids = list(load_layout(DataConfig(root=str(plan.cross), modality=cfg.data.modality),
                                check_images=False).test.frame["Id"])
    ids, by_fold = per_id_rows(faces["Id"], ensemble_logits(cfg, paths, runtime, folds, list(faces["path"]),
                                                             per_fold=True))
    prob = dict(zip(ids, sigmoid(by_fold.mean(axis=0))))
    prior = float(pd.read_csv(plan.dataset / "train_solution.csv")["target_feature"].mean())
    out = plan.run_dir / f"cross-{plan.cross.name}"
    probs = pd.DataFrame({"Id": test_ids, "prob": [float(prob.get(i, prior)) for i in test_ids]})
    save_csv(out / "test_probs.csv", probs)
    submission = write_submission(probs, read_threshold(paths), test_ids, out / "submission.csv")
    missing = int(np.sum([i not in prob for i in test_ids]))
    scores: dict[str, Any] = score_files(out / "submission.csv", plan.cross / "test_solution.csv", out / "test_probs.csv")
    scores["unaligned"] = float(missing)
    called = submission.set_index("Id").loc[list(prob), "target_feature"]
    shift = check_score_shift(sigmoid(by_fold), paths.oof_csv, float(called.mean()), "cross", folds)
    scores["score_shift"] = shift.as_dict() if shift else None
    return scores


# ----------------------------------------------------------------------------- results table


def device_text(cfg: Config, threads: int, loads: tuple[float, float]) -> str:
    """The device the stages ran on; on a CPU with the 1-minute load average at the start and the end."""
    if cfg.run.device != "cpu" and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return (f"CPU only ({cpu_name()}, {os.cpu_count()} cores, shared: load {loads[0]:.1f} -> {loads[1]:.1f}), "
            f"{threads} thread(s), no GPU")


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def table_header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"


def append_row(results: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the table under ``HEADING`` (heading, preamble and header written once).

    The row goes after the last table line of that section, so sections added after it stay intact.
    """
    line = "| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |\n"
    text = results.read_text() if results.is_file() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, s in enumerate(lines) if s.strip() == HEADING), None)
    if start is not None:
        lines = _migrate_table(lines, start)
        text = "".join(lines)
    if start is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        text = f"{text}{sep}{HEADING}\n\n{PREAMBLE}\n\n{table_header()}{line}"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rows = [i for i in range(start + 1, end) if lines[i].lstrip().startswith("|")]
        if rows:
            at = rows[-1] + 1
            if not lines[rows[-1]].endswith("\n"):
                lines[rows[-1]] += "\n"
            # A blank line keeps whatever follows (text, the next heading) out of the table.
            lines.insert(at, line if at == len(lines) or not lines[at].strip() else line + "\n")
        else:
            after = "\n" if end < len(lines) else ""  # a blank line before the next section's heading
            lines.insert(end, ("\n" if end and lines[end - 1].strip() else "") + table_header() + line + after)
        text = "".join(lines)
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(f".{results.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, results)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _migrate_table(lines: list[str], start: int) -> list[str]:
    """Rewrite the section's table for the current COLUMNS when a harness change added columns:
    each old row keeps its cells under their old column names, new columns stay empty."""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rows = [i for i in range(start + 1, end) if lines[i].lstrip().startswith("|")]
    if len(rows) < 2 or _cells(lines[rows[0]]) == COLUMNS:
        return lines
    old = _cells(lines[rows[0]])
    out = list(lines)
    header, separator = table_header().splitlines(keepends=True)
    out[rows[0]], out[rows[1]] = header, separator
    for i in rows[2:]:
        cells = dict(zip(old, _cells(lines[i]), strict=False))
        out[i] = "| " + " | ".join(cells.get(c, "") for c in COLUMNS) + " |\n"
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="dataset folder, or a name under --datasets (e.g. lfw_swap, rfff)")
    p.add_argument("--cross", metavar="OTHER", help="also score the fold models on OTHER's test images")
    p.add_argument("--config", default=str(REPO / "configs" / "quality_cpu.yaml"), help="pipeline config YAML")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set finetune.aug.sbi=0.5")
    p.add_argument("--tag", help="run name (default: dataset, config and a hash of the overrides)")
    p.add_argument("--datasets", default=str(DEFAULT_DATASETS), help="folder of named datasets (%(default)s)")
    p.add_argument("--scratch", default=str(DEFAULT_SCRATCH), help="faces and run folders (%(default)s)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="markdown file for the row")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads of every stage (default 1: "
                   "on a busy shared CPU one thread is several times faster than two)")
    p.add_argument("--force", action="store_true", help="delete an existing run folder of this tag first")
    p.add_argument("--resume", action="store_true", help="continue an existing run folder of this tag "
                   "(stage times then cover this invocation only)")
    p.add_argument("--no-reuse-ssl", action="store_true", help="train this run's own SSL encoder")
    p.add_argument("--diamonds-from", metavar="TAG", help="round 2: mine diamonds from the finished run TAG "
                   "(same scratch folder) and train with them")
    p.add_argument("--note", default="", help="free text for the notes column")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        return run(args, command)
    except QualityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, command: str) -> int:
    plan = make_plan(args)
    cfg = plan.cfg
    assert cfg is not None
    if plan.run_dir.exists():
        if args.force:
            shutil.rmtree(plan.run_dir)
        elif not args.resume:
            raise QualityError(f"{plan.run_dir} exists: --resume continues it, --force starts it again, "
                               "or pick another --tag")
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    notes = [args.note] if args.note else []
    if args.resume:
        notes.append("resumed: times of the last invocation only")
    setup_logging("INFO")
    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    times: dict[str, str] = {}

    seconds, summary = run_stage("align", plan, lambda: align(plan, plan.sets))
    times["align"] = f"{seconds:.0f}" + (" (cached)" if summary.processed == 0 else "")
    if summary.processed == 0:
        notes.append(f"clips already prepared ({summary.reused} clips)" if plan.cfg.data.modality == "audio"
                     else f"faces already aligned ({summary.reused} images)")

    sets = list(plan.sets)
    source: Path | None = None
    if args.diamonds_from:
        source = plan.scratch / "runs" / safe_tag(args.diamonds_from)
        seconds, mined = run_stage("diamonds", plan, lambda: mine_diamonds(plan, source))
        sets.append(f"data.pseudo_labels={plan.run_dir / 'diamonds.csv'}")
        notes.append(f"round 2: {mined['rows']} diamonds from run {source.name} ({mined['per_fold']}), "
                     f"{mined['correct']} correct ({mined['seconds']:.0f} s)")
    if cfg.finetune.init != "ssl" or not cfg.ssl.enabled:
        times["ssl"] = "-"
        sets.append("ssl.enabled=false")  # nothing reads an encoder
        if cfg.finetune.init == "ssl" and source is None:
            notes.append("ssl.enabled=false with init=ssl: finetune.ssl_encoder must be set")
    else:
        encoder = None if (args.no_reuse_ssl or cfg.finetune.ssl_encoder) else reusable_encoder(plan)
        if source is not None and (source / "ssl" / "encoder.safetensors").is_file():
            encoder = source / "ssl" / "encoder.safetensors"  # round 2 starts from round 1's encoder
        if encoder is not None:
            sets += [f"finetune.ssl_encoder={encoder}", "ssl.enabled=false"]
            times["ssl"] = "reused"
            notes.append(f"SSL encoder reused from run {encoder.parent.parent.name}")
        else:
            seconds, _ = run_stage("ssl", plan, lambda: train(plan, sets, "ssl"))
            times["ssl"] = f"{seconds:.0f}"
    for stage in ("finetune", "predict"):
        seconds, _ = run_stage(stage, plan, lambda: train(plan, sets, stage))  # noqa: B023 (called at once)
        times[stage] = f"{seconds:.0f}"
    pipeline_s = time.perf_counter() - started
    test = score_run(plan.run_dir, plan.dataset)
    threshold = json.loads((plan.run_dir / "threshold.json").read_text())
    n_pos_test, n_neg_test = class_counts(plan.dataset / "test_solution.csv")
    oof = pd.read_csv(plan.run_dir / "oof.csv", keep_default_na=False)
    if "made_by" in oof.columns and threshold.get("basis", "").startswith("the dataset's own"):
        oof = oof[oof["made_by"] == ""]  # self-made fakes are scored apart (threshold.json self_made)
    n_pos_oof, n_neg_oof = int(oof["target"].sum()), int((oof["target"] == 0).sum())
    if "self_made" in threshold:
        notes.append(self_made_note(threshold))
    if threshold.get("max_real_fpr") is not None:  # also when the config file, not --set, names the cap
        notes.append(threshold_note(threshold))
    notes.append(calls_note(plan.run_dir / "submission.csv", plan.dataset / "test_solution.csv"))
    notes.append(shift_note(json.loads((plan.run_dir / "predict.json").read_text()).get("score_shift"), "test"))

    if cfg.data.extra_roots or not cfg.data.train_root:
        notes.append(f"trained on {training_sources(cfg)}; OOF AUC per set: {oof_by_source(oof, cfg)}")

    cross: dict[str, float] = {}
    if plan.cross is not None and plan.cross_faces is not None:
        cross_sets = [*plan.sets, f"data.root={plan.cross}", f"{stage1_key(cfg)}={plan.cross_faces}"]  # later win
        align_s, _ = run_stage("cross-align", plan, lambda: align(plan, cross_sets, "test"))
        predict_s, cross = run_stage("cross-predict", plan, lambda: predict_cross(plan))
        if cross.get("unaligned"):
            notes.append(f"{int(cross['unaligned'])} cross test images unreadable: train prior")
        notes.append(calls_note(plan.run_dir / f"cross-{plan.cross.name}" / "submission.csv",
                                plan.cross / "test_solution.csv").replace("test calls", "cross calls"))
        notes.append(shift_note(cross.get("score_shift"), "cross"))
    base_s, base = run_stage("baseline", plan, lambda: run_baseline(plan))
    probe_s, probe = run_stage("probe", plan, lambda: run_probe(plan))
    total = time.perf_counter() - started
    n_pos_cross, n_neg_cross = class_counts(plan.cross / "test_solution.csv") if plan.cross else (0, 0)

    row = {
        "date": datetime.date.today().isoformat(),
        "dataset": plan.dataset.name, "cross": plan.cross.name if plan.cross else "-", "tag": plan.tag,
        "config + overrides": " ".join([_rel(plan.config), *plan.user_sets]),
        "device": device_text(cfg, args.threads, (load_start, os.getloadavg()[0])), "backbone": cfg.model.backbone
        + ("" if cfg.model.channels == ["rgb", "fft", "srm"] else f" ({'+'.join(cfg.model.channels)})")
        + (f", stem + {cfg.finetune.freeze_stages} stages frozen" if cfg.finetune.freeze_stages else ""),
        "px": f"{cfg.model.img_size} ({cfg.model.fit} of {cfg.align.size}{'' if cfg.align.resize else ' native'})"
        if cfg.data.modality != "audio" else f"{cfg.audio.n_mels}x{cfg.audio.frames} spectrogram windows",
        "epochs ssl/ft": f"{cfg.ssl.epochs if times['ssl'] not in ('-',) else 0}/{cfg.finetune.epochs}",
        "folds": cfg.finetune.folds, "align s": times["align"], "ssl s": times["ssl"],
        "finetune s": times["finetune"], "predict s": times["predict"], "pipeline s": f"{pipeline_s:.0f}",
        "OOF AUC": with_se(threshold.get("oof_auc"), n_pos_oof, n_neg_oof),
        "test AUC": with_se(test.get("auc"), n_pos_test, n_neg_test), "test F1": test.get("f1"),
        "test acc": test.get("acc"),
        "baseline test AUC (faces / raw)": f"{fmt(base['test']['faces'])} / {fmt(base['test']['raw'])}",
        "probe OOF AUC": with_se(probe["oof"], n_pos_oof, n_neg_oof) if probe else None,
        "probe test AUC (faces / raw)": f"{fmt(probe['test']['faces'])} / {fmt(probe['test']['raw'])}"
        if probe else None,
        "cross AUC": with_se(cross.get("auc"), n_pos_cross, n_neg_cross) if cross else None,
        "cross F1": cross.get("f1"), "cross acc": cross.get("acc"),
        "baseline cross AUC (faces / raw)": f"{fmt(base['cross']['faces'])} / {fmt(base['cross']['raw'])}"
        if cross else None,
        "probe cross AUC (faces / raw)": f"{fmt(probe['cross']['faces'])} / {fmt(probe['cross']['raw'])}"
        if cross and probe else None,
        "notes": "; ".join(notes + [f"total with cross, baseline and probe {total:.0f} s"]
                           + ([f"probe {probe_s:.0f} s"] if probe else [])) or "-",
        "command": f"`{command}`",
    }
    (plan.run_dir / "quality.json").write_text(json.dumps(
        {"row": row, "test": test, "cross": cross, "threshold": threshold, "baseline": base, "probe": probe,
         "sets": sets},
        indent=2, default=str))
    append_row(Path(args.results), row)
    print(f"[quality] {plan.tag}: test AUC {row['test AUC']} F1 {fmt(test.get('f1'))} acc {fmt(test.get('acc'))} "
          f"(baseline {row['baseline test AUC (faces / raw)']}, probe {row['probe test AUC (faces / raw)']})"
          + (f" | cross {plan.cross.name} AUC {row['cross AUC']} (baseline {row['baseline cross AUC (faces / raw)']})"
             if cross else "")
          + f" | pipeline {pipeline_s:.0f} s, total {total:.0f} s -> {args.results}", flush=True)
    return 0


def training_sources(cfg: Config) -> str:
    names = ([Path(cfg.data.root).name] if cfg.data.train_root else []) + [Path(r).name for r in cfg.data.extra_roots]
    return " + ".join(names)


def oof_by_source(oof: pd.DataFrame, cfg: Config) -> str:
    """Each training set's own out-of-fold AUC (Ids of data.extra_roots carry ``<set>__``)."""
    from deepfake_pipeline.metrics import binary_metrics

    source = oof["Id"].astype(str).str.extract(r"^(.+?)__", expand=False).fillna(Path(cfg.data.root).name)
    return ", ".join(f"{name} {fmt(binary_metrics(part['target'], part['prob'])['auc'])}"
                     for name, part in oof.groupby(source, sort=True))


def class_counts(solution: Path) -> tuple[int, int]:
    y = pd.read_csv(solution)["target_feature"]
    return int((y == 1).sum()), int((y == 0).sum())


def with_se(auc: float | None, n_pos: int, n_neg: int) -> str | None:
    """``0.9512 ± 0.0081``: the AUC and its standard error (Hanley & McNeil)."""
    from deepfake_pipeline.metrics import auc_standard_error

    if auc is None:
        return None
    return f"{fmt(auc)} ± {auc_standard_error(auc, n_pos, n_neg):.4f}"


def _aligned_paths(faces_root: Path, split: str, ids: list[str]) -> list[str] | None:
    """Stage 1's image for each Id, or None when some row has none (unreadable inputs)."""
    table = pd.read_csv(faces_root / "faces.csv", dtype={"Id": str}, keep_default_na=False)
    table = table[(table["split"] == split) & (table["path"] != "")].set_index("Id")["path"]
    if not set(ids) <= set(table.index):
        return None
    return [p if Path(p).is_absolute() else str(faces_root / p) for p in table.loc[ids]]


def _raw_paths(root: Path, split: str, ids: list[str]) -> list[str]:
    files = {p.stem: str(p) for p in (root / f"{split}_images").iterdir()}
    return [files[i] for i in ids]


def _input_paths(plan: Plan, kind: str, train: pd.DataFrame, test: pd.DataFrame, cross: pd.DataFrame | None
                 ) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    """(train, test, cross test) image paths for the baseline and the probe: stage 1's aligned faces
    (``kind`` faces; None where a row has none) or the raw images (``raw``); cross None without it."""
    if kind == "faces":
        return (_aligned_paths(plan.faces, "train", list(train["Id"])),
                _aligned_paths(plan.faces, "test", list(test["Id"])),
                _aligned_paths(plan.cross_faces, "test", list(cross["Id"]))
                if cross is not None and plan.cross_faces else None)
    return (list(train["path"]), _raw_paths(plan.dataset, "test", list(test["Id"])),
            _raw_paths(plan.cross, "test", list(cross["Id"])) if cross is not None and plan.cross else None)


def _training_rows(plan: Plan) -> pd.DataFrame:
    """What the run trained on (Id, target_feature, raw path): data.root's labelled rows and those of
    ``data.extra_roots`` (prefixed Ids, as in stage 1's manifest), so that the baseline and the probe
    learn from the same images as the pipeline, leave-one-dataset-out included."""
    from deepfake_pipeline.dataset import load_layout

    assert plan.cfg is not None
    frame = load_layout(plan.cfg.data, check_images=False).train.frame
    return pd.DataFrame({"Id": frame["Id"], "target_feature": frame["target"], "path": frame["path"]})


def run_probe(plan: Plan) -> dict[str, Any] | None:
    """The frozen-feature probe of the run's pretrained backbone on the same split: out of fold on the
    run's folds (aligned faces), and on the test and cross test sets (aligned faces / raw images).
    None when the recipe names no pretrained weights (nothing to probe) or for speech."""
    import frozen_probe as fpr

    from deepfake_pipeline.metrics import binary_metrics

    assert plan.cfg is not None
    if plan.cfg.data.modality == "audio":
        return None
    model = fpr.frozen_backbone(plan.cfg)
    if model is None:
        return None
    train = _training_rows(plan)
    test = pd.read_csv(plan.dataset / "test_solution.csv", dtype={"Id": str})
    cross = pd.read_csv(plan.cross / "test_solution.csv", dtype={"Id": str}) if plan.cross else None
    folds = pd.read_csv(plan.run_dir / "folds.csv", dtype={"Id": str}).query("is_pseudo == 0").set_index("Id")["fold"]
    y = train["target_feature"].to_numpy()
    out: dict[str, Any] = {"oof": None, "test": {}, "cross": {}}
    for kind in ("faces", "raw"):
        paths = _input_paths(plan, kind, train, test, cross)
        if paths[0] is None or paths[1] is None:
            out["test"][kind] = out["cross"][kind] = None
            continue
        sets = [fpr.features(model, paths[1])] + ([fpr.features(model, paths[2])] if paths[2] is not None else [])
        oof, probs = fpr.oof_and_test(fpr.features(model, paths[0]), y,
                                      folds.loc[train["Id"]].to_numpy() if kind == "faces" else None, *sets)
        if oof is not None:
            out["oof"] = binary_metrics(y, oof)["auc"]
        out["test"][kind] = binary_metrics(test["target_feature"], probs[0])["auc"]
        out["cross"][kind] = binary_metrics(cross["target_feature"], probs[1])["auc"] if len(probs) > 1 else None
    return out


def run_baseline(plan: Plan) -> dict[str, dict[str, float | None]]:
    """The spectral baseline on the same train/test split: on the aligned faces and on the raw images,
    each scored on the test set and (the same model) on the cross dataset's test set."""
    import spectral_baseline as sb

    from deepfake_pipeline.metrics import binary_metrics

    assert plan.cfg is not None
    if plan.cfg.data.modality == "audio":  # speech: the long-term spectrum baseline, on the raw clips
        return audio_baseline(plan)

    train = _training_rows(plan)
    test = pd.read_csv(plan.dataset / "test_solution.csv", dtype={"Id": str})
    cross = pd.read_csv(plan.cross / "test_solution.csv", dtype={"Id": str}) if plan.cross else None
    out: dict[str, dict[str, float | None]] = {"test": {}, "cross": {}}
    for kind in ("faces", "raw"):
        paths = _input_paths(plan, kind, train, test, cross)
        if paths[0] is None or paths[1] is None:
            out["test"][kind] = out["cross"][kind] = None
            continue
        train_x = sb.features(paths[0])
        y = train["target_feature"].to_numpy()
        out["test"][kind] = binary_metrics(test["target_feature"], sb.fit_predict(train_x, y, sb.features(paths[1])))["auc"]
        if paths[2] is not None and cross is not None:
            out["cross"][kind] = binary_metrics(cross["target_feature"],
                                                sb.fit_predict(train_x, y, sb.features(paths[2])))["auc"]
        else:
            out["cross"][kind] = None
    return out


def audio_baseline(plan: Plan) -> dict[str, dict[str, float | None]]:
    """benchmarks/audio_baseline.py on the same split (raw clips; there are no aligned faces)."""
    import audio_baseline as ab

    from deepfake_pipeline.metrics import binary_metrics

    def clips(root: Path, split: str, ids: list[str]) -> list[str]:
        files = {p.stem: str(p) for p in (root / f"{split}_audio").iterdir()}
        return [files[i] for i in ids]

    train = pd.read_csv(plan.dataset / "train_solution.csv", dtype={"Id": str})
    test = pd.read_csv(plan.dataset / "test_solution.csv", dtype={"Id": str})
    train_x = ab.features(clips(plan.dataset, "train", list(train["Id"])))
    train_y = train["target_feature"].to_numpy()
    if plan.cfg.audio.self_fakes:  # the pipeline's self-made fakes, as raw clips: the same methods and seeds
        made_x = self_made_baseline_features(plan.cfg, train, clips(plan.dataset, "train", list(train["Id"])),
                                             plan.scratch / "made_features")
        train_x, train_y = np.concatenate([train_x, made_x]), np.r_[train_y, np.ones(len(made_x), dtype=int)]
    prob = ab.fit_predict(train_x, train_y, ab.features(clips(plan.dataset, "test", list(test["Id"]))))
    return {"test": {"faces": None, "raw": binary_metrics(test["target_feature"], prob)["auc"]},
            "cross": {"faces": None, "raw": None}}


def calls_note(submission: Path, solution: Path) -> str:
    """How the OOF threshold's calls on the test set compare with the truth: a threshold that does not
    survive a shift (new generators, codecs) calls a share far from the true one."""
    sub = pd.read_csv(submission, dtype={"Id": str}).set_index("Id")
    truth = pd.read_csv(solution, dtype={"Id": str}).set_index("Id")["target_feature"]
    called = sub.loc[truth.index, "target_feature"].to_numpy() == 1
    fake = truth.to_numpy() == 1
    caught = f", fakes called fake {called[fake].mean():.0%}, reals called fake {called[~fake].mean():.0%}" \
        if fake.any() and (~fake).any() else ""
    return f"test calls at the OOF threshold: {called.mean():.0%} fake (true {fake.mean():.0%}){caught}"


def threshold_note(threshold: dict[str, Any]) -> str:
    """The row's note on a capped threshold (threshold.json ``max_real_fpr``): the row's command may not
    show the cap when the config file sets it, and whether it acted changes what the calls mean."""
    cap, f1, chosen = threshold["max_real_fpr"], threshold["threshold_f1"], threshold["threshold"]
    acted = f"lowered F1's {f1:.4f} to {chosen:.4f}" if chosen < f1 else f"left F1's {f1:.4f} (it already calls more)"
    share = threshold.get("oof_real_fpr")
    called = f", {share:.1%} of the OOF reals called fake" if share is not None else ""
    return f"threshold capped at finetune.max_real_fpr {cap:g}: {acted}{called}"


def shift_note(shift: dict[str, Any] | None, what: str) -> str:
    """The row's note on ``shift.score_shift`` (predict.json ``score_shift``): do the scores fit a mix of
    the OOF real and fake scores, and which mix."""
    if not shift:
        return f"{what} score-shift check: too few items"
    verdict = "SHIFTED (predict warns)" if shift["shifted"] else "fits"
    folds = shift.get("folds", 1)
    each = f" (median of {folds} fold models, {shift['folds_shifted']} shifted)" if folds > 1 else ""
    return (f"{what} scores vs a mix of OOF real/fake scores{each}: KS {shift['distance']:.2f} "
            f"({shift['expected']:.2f} by chance), best mix {100 * shift['share']:.0f}% fake: {verdict}")


def self_made_note(threshold: dict[str, Any]) -> str:
    """The row's note on the self-made fakes' out-of-fold figures (threshold.json ``self_made``)."""
    made = threshold["self_made"]
    methods = ", ".join(f"{m} {fmt(v)}" for m, v in sorted(made["by_method"].items()))
    basis = "" if threshold.get("basis", "").startswith("the dataset's own") else \
        "; no real fake in training: OOF figures and threshold on real clips vs self-made fakes"
    return (f"self-made fakes OOF AUC {fmt(made['auc'])} vs the real clips ({made['n']} clips: {methods}), "
            f"{100 * made['called_fake']:.0f}% called fake{basis}")


def self_made_baseline_features(cfg: Config, train: pd.DataFrame, paths: list[str], cache: Path) -> np.ndarray:
    """The baseline's features of every self-made fake stage 1 makes (``audio.self_fakes`` of each real
    training clip, seeded as ``audio_stage.made_plan`` seeds them), resynthesised from the raw clip.

    Each one is kept under ``cache`` by source file, method, seed and the method's code
    (``resynth.code_version``; the ``hifigan`` vocoder takes 0.4 s per second of speech here), so
    other layouts of the same clips reuse it and a change to the method does not."""
    import audio_baseline as ab

    from deepfake_pipeline.audio_stage import made_plan
    from deepfake_pipeline.images import atomic_path
    from deepfake_pipeline.resynth import code_version, resynthesise

    rows = []
    for ident, target, path in zip(train["Id"], train["target_feature"], paths):
        plan_ = made_plan(cfg, "train", str(ident), int(target))
        x = None  # decoded on the first fake not kept yet
        for method, seed in plan_:
            code = code_version(method)
            key = hashlib.sha1(f"{Path(path).resolve()}|{method}|{seed}|{ab.RATE}|{code}".encode()).hexdigest()[:20]
            kept = cache / f"{key}.npy"
            if kept.is_file():
                rows.append(np.load(kept))
                continue
            x = ab.clip_samples(path) if x is None else x
            rows.append(ab.signal_features(resynthesise(x, ab.RATE, method, seed)))
            with atomic_path(kept, durable=False) as tmp, open(tmp, "wb") as handle:
                np.save(handle, rows[-1])
    return np.stack(rows) if rows else np.zeros((0, 2 * (ab.N_FFT // 2 + 1)), dtype=np.float32)


def mine_diamonds(plan: Plan, source: Path) -> dict[str, Any]:
    """``make_diamonds.py --run SOURCE --config CONFIG``: this run's diamonds section (its ``--set
    diamonds.*`` included), the source's models as trained (none of this run's other overrides);
    scored against the test labels for the row (never shown to the pipeline)."""
    from deepfake_pipeline.diamonds import run_diamonds

    if not (source / "threshold.json").is_file():
        raise QualityError(f"--diamonds-from: {source} is not a finished run of this scratch folder")
    start = time.perf_counter()
    # Round 1's models as trained: of this run's overrides only its diamonds settings apply to mining.
    mining_sets = [s for s in plan.user_sets if s.split("=", 1)[0].strip().startswith("diamonds.")]
    summary = run_diamonds(source, config=plan.config, overrides=mining_sets, out=plan.run_dir / "diamonds.csv")
    mined = pd.read_csv(plan.run_dir / "diamonds.csv", dtype={"Id": str}).query("is_pseudo == 1")
    truth = pd.read_csv(plan.dataset / "test_solution.csv", dtype={"Id": str}).set_index("Id")["target_feature"]
    correct = int((mined["target_feature"].to_numpy() == truth.loc[mined["Id"]].to_numpy()).sum())
    return {"rows": len(mined), "correct": correct, "seconds": time.perf_counter() - start,
            "per_fold": "per fold" if summary.per_fold else "by the ensemble"}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
