"""The fallback that always answers: a complete, valid submission from whatever a run has.

``safe_inference.py --run weights/<run>`` uses every finished fold that loads (at least one), on
CUDA or the CPU, and never lets one image stop the others:

- test images without a usable aligned face (no ``faces.csv``, a row missing, a file deleted or
  corrupt) are aligned on the fly from the raw image with the run's own policy (``faces.py``:
  MTCNN + crop policy; centre crop when detection fails; letterbox when ``align.enabled`` is off);
- out of memory halves the batch and goes on (down to 1, then a clear error);
- a batch whose forward fails is retried image by image; an image that still fails, or whose raw
  file cannot be read, gets the training prior's class and a row in ``problems.csv``.

``--input PATH`` runs the same machinery on one photo or a folder of photos: "does this look fake?".
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .artifacts import RunPaths, load_faces, stage1_mismatch, stage1_out, usable_faces
from .augment import InputFit, input_fit, parse_tta
from .config import Config
from .dataset import decode_face, input_extensions, list_images, load_layout, read_labels, split_dirs
from .engine import batch_logits
from .errors import CheckpointError, DataValidationError, PipelineError
from .faces import FaceDetector, centre_box, choose, detection_copy, letterbox, look_closer, make_crop
from .images import read_image, save_csv, save_jpeg
from .runtime import Runtime, show_progress
from .shift import check_score_shift
from .submission import call_fake, prior_answer, validate_submission
from .trained import (
    Calibration,
    finished_folds,
    fold_calibration,
    load_fold_model,
    read_threshold,
    saved_calibration,
    sigmoid,
    trained_stage1_hashes,
)

log = logging.getLogger(__name__)

View = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- on-the-fly alignment


@dataclass
class Aligned:
    """One raw input through stage 1 now: status face | fallback | whole | unreadable (images) or
    window | silent | unreadable (speech)."""

    status: str
    path: Path | None = None  # the crop (JPEG, as the alignment stage writes it); speech: the first window
    prob: float | None = None  # detection probability of the chosen face
    note: str = ""
    items: list[Path] = field(default_factory=list)  # every stage-1 image: [path] for a face, the windows

    def __post_init__(self) -> None:
        if self.path is not None and not self.items:
            self.items = [self.path]


class OnTheFlyAligner:
    """Aligns raw images with the run's ``align`` settings into ``workdir`` (faces.py policy).

    The MTCNN detector is built on first use; if it cannot be built or fails on a batch, those
    images get the centre crop (status fallback) instead.
    """

    def __init__(self, cfg: Config, device: torch.device, workdir: Path):
        self.cfg = cfg
        self.device = device
        self.workdir = workdir
        self._detector: FaceDetector | None = None
        self._detector_error: str | None = None
        self._count = 0

    def _get_detector(self) -> FaceDetector | None:
        if self._detector is None and self._detector_error is None:
            try:
                self._detector = FaceDetector.for_config(self.cfg.align, self.device)
            except Exception as exc:  # missing package, weights, device trouble: centre crops then
                self._detector_error = f"detector unavailable ({type(exc).__name__}: {exc})"
                log.warning("on-the-fly alignment: %s; centre crops instead", self._detector_error)
        return self._detector

    def align(self, sources: list[Path]) -> list[Aligned]:
        acfg = self.cfg.align
        out: list[Aligned] = []
        step = max(1, acfg.batch_size)
        for start in range(0, len(sources), step):
            out += self._align_batch(sources[start:start + step])
        return out

    def _align_batch(self, sources: list[Path]) -> list[Aligned]:
        acfg, dcfg = self.cfg.align, self.cfg.data
        pixels: list[np.ndarray | None] = []
        results: list[Aligned] = []
        for src in sources:
            try:
                loaded = read_image(src, dcfg.max_pixels, dcfg.allow_truncated)
                pixels.append(loaded.pixels)
                results.append(Aligned("pending", note=loaded.note))
            except Exception as exc:  # ImageReadError, OSError, anything the decoder throws
                pixels.append(None)
                results.append(Aligned("unreadable", note=str(getattr(exc, "reason", exc))))
        found: dict[int, list] = {}
        detect_note = ""
        todo = [i for i, p in enumerate(pixels) if p is not None]
        if acfg.enabled and todo:
            detector = self._get_detector()
            if detector is None:
                detect_note = self._detector_error or "detector unavailable"
            else:
                copies = [detection_copy(pixels[i], acfg.detect_max_side) for i in todo]  # type: ignore[arg-type]
                try:
                    faces = detector.detect([c for c, _ in copies], [s for _, s in copies])
                    look_closer(detector, [pixels[i] for i in todo], faces, acfg)  # type: ignore[misc]
                    found = dict(zip(todo, faces))
                except Exception as exc:
                    detect_note = f"face detection failed ({type(exc).__name__}: {exc})"
                    log.warning("on-the-fly alignment: %s; centre crops for %d image(s)", detect_note, len(todo))
        for i in todo:
            results[i] = self._crop(pixels[i], found.get(i), detect_note, results[i].note)  # type: ignore[arg-type]
        return results

    def _crop(self, pixels: np.ndarray, faces: list | None, detect_note: str, read_note: str) -> Aligned:
        acfg = self.cfg.align
        height, width = pixels.shape[:2]
        notes = [n for n in (read_note,) if n]
        target = self.workdir / f"{self._count:07d}.jpg"  # never built from an Id
        self._count += 1
        try:
            if not acfg.enabled:
                crop, result = letterbox(pixels, acfg.size), Aligned("whole")
            elif faces is None:
                crop, result = make_crop(pixels, centre_box(width, height), acfg)[0], Aligned("fallback")
                notes.append(detect_note or "no detection")
            else:
                choice = choose(faces, width, height, acfg)
                crop = make_crop(pixels, choice.box, acfg)[0]
                result = Aligned(choice.status, prob=choice.face.prob if choice.face else choice.best_prob)
                if choice.face is None:
                    notes.append("no face detected" if choice.best_prob is None
                                 else f"best face prob {choice.best_prob:.3f} < min_prob {acfg.min_prob}")
            save_jpeg(target, crop, acfg.jpeg_quality)
        except Exception as exc:  # a crop that cannot be made or written
            return Aligned("unreadable", note=f"alignment failed: {type(exc).__name__}: {exc}")
        result.path, result.items = target, [target]
        result.note = "; ".join(notes)
        return result


class OnTheFlySpectrograms:
    """Speech clips through stage 1 now (``audio.render_clip`` with the run's ``audio`` settings): the
    windows as PNGs in ``workdir``; silent or unreadable clips get no window and say why."""

    def __init__(self, cfg: Config, workdir: Path):
        self.cfg = cfg
        self.workdir = workdir
        self._count = 0

    def align(self, sources: list[Path]) -> list[Aligned]:
        from .audio import render_clip

        out = []
        for src in sources:
            clip = render_clip(src, self.cfg.audio, self.cfg.data.allow_truncated)
            items = []
            for window in clip.windows:
                target = self.workdir / f"{self._count:07d}_w{window.index}.png"  # never built from an Id
                target.write_bytes(window.png)
                items.append(target)
            self._count += 1
            out.append(Aligned(clip.status, items[0] if items else None, note=clip.note, items=items))
        return out


def on_the_fly(cfg: Config, device: torch.device, workdir: Path) -> OnTheFlyAligner | OnTheFlySpectrograms:
    """Stage 1 for raw inputs, as the run's modality does it."""
    return OnTheFlySpectrograms(cfg, workdir) if cfg.data.modality == "audio" else OnTheFlyAligner(cfg, device, workdir)


# ----------------------------------------------------------------------------- robust forward


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


@torch.no_grad()
def model_logits(model: nn.Module, images: torch.Tensor, runtime: Runtime, fit: InputFit,
                 views: list[View]) -> torch.Tensor:
    """Mean logit over ``views`` of a uint8 batch, on the CPU."""
    return batch_logits(model, images, runtime, fit, views).cpu()


class SafePredictor:
    """Fold models whose forward halves the batch on out-of-memory and isolates failing images."""

    def __init__(self, models: dict[int, nn.Module], runtime: Runtime, fit: InputFit, views: list[View],
                 batch_size: int, calibrations: dict[int, Calibration] | None = None):
        self.models = models
        self.calibrations = calibrations or {}
        self.runtime = runtime
        self.fit = fit
        self.views = views
        self.batch_size = max(1, batch_size)
        self.halvings: list[int] = []  # batch sizes that ran out of memory

    def _call(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        # Looked up at call time: the tests replace it to simulate out-of-memory.
        return model_logits(model, images, self.runtime, self.fit, self.views).double().numpy()

    def _oom(self, size: int) -> None:
        if size <= 1:
            raise PipelineError(
                f"out of memory on {self.runtime.device} even at batch size 1: free the device or rerun with "
                "--device cpu"
            )
        self.halvings.append(size)
        self.batch_size = max(1, size // 2)
        log.warning("out of memory at batch size %d on %s: going on with %d", size, self.runtime.device,
                    self.batch_size)
        if self.runtime.device.type == "cuda":
            torch.cuda.empty_cache()

    def _forward(self, model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, list[str | None]]:
        """Logits of one model for a host uint8 batch (NaN where it failed) and the failure reasons."""
        n = images.shape[0]
        logits = np.full(n, np.nan)
        errors: list[str | None] = [None] * n
        start = 0
        while start < n:
            size = self.batch_size
            part = images[start:start + size]
            failure: BaseException | None = None
            try:
                logits[start:start + len(part)] = self._call(model, part)
            except Exception as exc:
                failure = exc
            if failure is not None and is_oom(failure):
                del failure
                self._oom(len(part))
                continue  # same start, smaller batch
            if failure is not None:  # not memory: find the image(s) responsible
                log.warning("model forward failed on a batch of %d (%s): retrying image by image", len(part),
                            _short(failure))
                del failure
                for j in range(len(part)):
                    one: BaseException | None = None
                    try:
                        logits[start + j] = self._call(model, part[j:j + 1])[0]
                    except Exception as exc:
                        one = exc
                    if one is not None:
                        if is_oom(one):
                            self._oom(1)
                        errors[start + j] = f"model forward failed: {_short(one)}"
                if len(part) > 1 and all(errors[start:start + len(part)]):
                    # Every image fails alone too: the model or the device is broken, not the data.
                    raise PipelineError(
                        f"the model fails on every image of a batch on {self.runtime.device} ({errors[start]}); "
                        "try --device cpu"
                    )
            start += len(part)
        for i in np.flatnonzero(~np.isfinite(logits)):
            errors[i] = errors[i] or "model gave a non-finite logit"
            logits[i] = np.nan
        return logits, errors

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        """Mean calibrated logit over the folds (NaN where every fold failed), a reason per failed image,
        and a note per image that only some folds could judge (which ones answered, why the others not)."""
        per_fold = []
        n = images.shape[0]
        reasons: list[str | None] = [None] * n
        failed: list[list[str]] = [[] for _ in range(n)]
        for k, model in self.models.items():
            logits, errors = self._forward(model, images)
            per_fold.append(self.calibrations.get(k, Calibration())(logits))
            reasons = [r or e for r, e in zip(reasons, errors)]
            for i, e in enumerate(errors):
                if e:
                    failed[i].append(f"fold {k}: {e}")
        stacked = np.stack(per_fold)
        ok = np.isfinite(stacked)
        count = ok.sum(axis=0)
        mean = np.where(count > 0, np.where(ok, stacked, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
        folds = list(self.models)
        partial = [None if not f or c == 0 else
                   f"folds {','.join(str(k) for k, good in zip(folds, ok[:, i]) if good)} of {len(folds)} answered "
                   f"({'; '.join(f)})" for i, (f, c) in enumerate(zip(failed, count))]
        return mean, [None if c > 0 else r for c, r in zip(count, reasons)], partial


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _FaceFiles(Dataset):
    """Stage-1 image files -> uint8 3xHxW tensors of one shape (``size``: side, or (height, width));
    a file that cannot be decoded yields its error instead."""

    def __init__(self, paths: list[Path], size: int | tuple[int, int]):
        self.paths = paths
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = decode_face(str(self.paths[index]))
            if tuple(image.shape[1:]) != self.size:  # one size per batch: stackable
                image = torch.nn.functional.interpolate(
                    image[None].float(), size=self.size, mode="bilinear", antialias=True,
                    align_corners=False,
                )[0].round().clamp(0, 255).to(torch.uint8)
            return index, image, None
        except Exception as exc:
            return index, None, str(getattr(exc, "reason", None) or _short(exc))


def _as_list(batch: list) -> list:
    return batch


def predict_files(predictor: SafePredictor, paths: list[Path], size: int | tuple[int, int], workers: int, chunk: int,
                  progress: bool = False) -> tuple[np.ndarray, list[str | None], list[str | None], list[str | None]]:
    """(mean logits, decode errors, model errors, partial-fold notes) for stage-1 image files, in order."""
    from tqdm import tqdm

    logits = np.full(len(paths), np.nan)
    decode_errors: list[str | None] = [None] * len(paths)
    model_errors: list[str | None] = [None] * len(paths)
    partial: list[str | None] = [None] * len(paths)
    loader = DataLoader(_FaceFiles(paths, size), batch_size=max(1, chunk), shuffle=False, num_workers=workers,
                        collate_fn=_as_list)
    for batch in tqdm(loader, desc="safe predict", disable=not show_progress(progress), leave=False, dynamic_ncols=True):
        good = [(i, img) for i, img, err in batch if img is not None]
        for i, _, err in batch:
            if err is not None:
                decode_errors[i] = err
        if not good:
            continue
        mean, errors, notes = predictor.predict(torch.stack([img for _, img in good]))
        for (i, _), value, error, note in zip(good, mean, errors, notes):
            logits[i] = value
            model_errors[i] = error
            partial[i] = note
    return logits, decode_errors, model_errors, partial


# ----------------------------------------------------------------------------- the run's pieces


def load_models(cfg: Config, paths: RunPaths, runtime: Runtime) -> dict[int, nn.Module]:
    """Every finished fold whose weights load; PipelineError when none does."""
    folds = finished_folds(paths, cfg.finetune.folds)
    if not folds:
        raise PipelineError(
            f"{paths.root}: no finished folds (fold<k>/done.json + best.safetensors): nothing to predict with; "
            "finish at least one fold with train.py --stage finetune"
        )
    models, failed = {}, []
    for k in folds:
        try:
            models[k] = load_fold_model(cfg, paths, k, runtime)
        except CheckpointError as exc:
            failed.append(f"fold {k}: {exc}")
            log.warning("safe inference: fold %d skipped: %s", k, exc)
        except Exception as exc:
            if is_oom(exc):
                raise PipelineError(f"out of memory loading fold {k} on {runtime.device}: rerun with --device cpu"
                                    ) from exc
            raise
    if not models:
        raise PipelineError("no finished fold could be loaded: " + "; ".join(failed))
    log.info("safe inference: %d/%d fold(s) usable: %s", len(models), cfg.finetune.folds, sorted(models))
    return models


def threshold_or_default(paths: RunPaths, cfg: Config | None = None) -> float:
    """threshold.json when present and readable (chosen again by ``cfg``'s rule where it differs,
    :func:`~.trained.read_threshold`), else 0.5 (with a warning)."""
    if paths.threshold_json.is_file():
        try:
            value = read_threshold(paths, cfg)
            if 0.0 <= value <= 1.0:
                return value
            log.warning("%s: threshold %s outside [0, 1]", paths.threshold_json, value)
        except Exception as exc:  # torn or hand-edited file
            log.warning("%s unreadable (%s)", paths.threshold_json, _short(exc))
    else:
        log.warning("%s not found (not every fold finished?)", paths.threshold_json)
    log.warning("safe inference: using the default threshold 0.5")
    return 0.5


def test_set_and_prior(cfg: Config, paths: RunPaths) -> tuple[dict[str, Path], float]:
    """Test Id -> raw image, and the share of fakes among the training labels.

    A dataset that fails validation (e.g. an inference box with test images only) still answers for
    the test images found; the prior then comes from the labels that parse, the run's folds.csv, or 0.5.
    """
    prior: float | None = None
    try:
        layout = load_layout(cfg.data, check_images=False)
        test = {i: Path(p) for i, p in zip(layout.test.frame["Id"], layout.test.frame["path"])}
        prior = float(layout.train.frame["target"].mean())
    except DataValidationError as exc:
        root = Path(cfg.data.root)
        images, _, _ = list_images(root / split_dirs(cfg.data)[1], input_extensions(cfg.data))
        if not images:
            raise PipelineError(f"no test images to answer for: {exc}") from exc
        log.warning("safe inference: dataset problems (%s); answering for the %d test image(s) found",
                    exc.problems[0], len(images))
        test = dict(images)
        labels, _ = read_labels(root / cfg.data.labels_csv)
        targets = pd.to_numeric(labels["target"], errors="coerce")
        targets = targets[targets.isin([0, 1])]
        if len(targets):
            prior = float(targets.mean())
    if prior is None and paths.folds_csv.is_file():
        folds = pd.read_csv(paths.folds_csv)
        if "target" in folds.columns:
            original = folds[folds["is_pseudo"] == 0] if "is_pseudo" in folds.columns else folds
            prior = float(original["target"].mean()) if len(original) else None
    if prior is None or not np.isfinite(prior):
        log.warning("safe inference: no training labels found: prior 0.5")
        prior = 0.5
    return test, prior


def aligned_faces(cfg: Config, test_ids: list[str], expected: set[str]
                  ) -> tuple[dict[str, tuple[list[Path], str]], dict[str, str], str]:
    """Test Id -> (its stage-1 image files in this config's stage-1 folder, status), for the Ids whose
    every stage-1 image is there (a face: its file; a clip: all its windows) and was made with stage-1
    settings in ``expected``; Id -> why stage 1 must be redone for the others that have rows; and why
    there is nothing when the manifest cannot be read. Half a clip is never judged as if whole."""
    try:
        faces = load_faces(cfg)
    except Exception as exc:
        return {}, {}, f"no stage-1 manifest: {_short(exc)}"
    folder = stage1_out(cfg)
    wanted = set(test_ids)
    rows = usable_faces(faces, "test")
    rows = rows[rows["Id"].isin(wanted)]
    stale = stage1_mismatch(rows, expected)
    redo: dict[str, str] = {}
    if stale.any():
        log.warning("safe inference: %d test input(s) in %s were made with other stage-1 settings than the fold "
                    "models' training images: stage 1 is redone for them", rows.loc[stale, "Id"].nunique(), folder)
        redo.update({i: "stage-1 image made with other settings" for i in rows.loc[stale, "Id"]})
    found: dict[str, tuple[list[Path], str]] = {}
    missing: dict[str, int] = {}
    for ident, recorded, status in zip(rows["Id"], rows["path"], rows["status"]):
        # The file of *this* stage-1 folder, wherever it was when the manifest was written.
        path = folder / "test" / Path(str(recorded)).name
        if path.is_file():
            found.setdefault(ident, ([], str(status)))[0].append(path)
        else:
            missing[ident] = missing.get(ident, 0) + 1
    for ident, n in missing.items():
        total = n + len(found.get(ident, ([], ""))[0])
        if ident in found:
            redo.setdefault(ident, f"{n} of {total} stage-1 windows missing")
    return {i: v for i, v in found.items() if i not in redo}, redo, ""


# ----------------------------------------------------------------------------- the two commands


PROBLEM_COLUMNS = ["Id", "answer", "reason", "prob", "target_feature"]


@dataclass
class SafeResult:
    submission: pd.DataFrame  # Id, target_feature
    probs: pd.DataFrame  # Id, prob, source (aligned | realigned | prior), status
    # Id, answer (prior: nothing could judge it | partial: judged from part of it), reason, prob, target_feature
    problems: pd.DataFrame
    folds: list[int]
    threshold: float
    prior: float
    batch_size: int  # after any halving
    halvings: list[int] = field(default_factory=list)
    out: Path | None = None

    def line(self) -> str:
        src = self.probs["source"].value_counts()
        halved = f", batch halved at {self.halvings}" if self.halvings else ""
        partial = int((self.problems["answer"] == "partial").sum())
        return (f"safe inference: {len(self.submission)} test inputs, folds {self.folds}, threshold "
                f"{self.threshold:.4f}, batch {self.batch_size}{halved} | {src.get('aligned', 0)} from stage-1 images, "
                f"{src.get('realigned', 0)} through stage 1 on the fly, {src.get('prior', 0)} prior "
                f"({self.prior:.3f} -> class {prior_answer(self.prior, self.threshold)[1]}), {partial} partial "
                f"(problems.csv), {int(self.submission['target_feature'].sum())} predicted fake -> {self.out}")


def load_calibrations(cfg: Config, paths: RunPaths, runtime: Runtime, folds: list[int]) -> dict[int, Calibration]:
    """Each fold's calibration for these TTA views: fitted now when the fold's validation faces are at
    hand, else the saved one of its OOF predictions; a fold without either keeps its raw logits, and
    the threshold may then not fit them (a warning says so)."""
    out = {}
    for k in folds:
        try:
            found = fold_calibration(cfg, paths, runtime, k)
        except Exception as exc:  # no training faces on this box, a torn file: the saved one then
            log.warning("safe inference: fold %d cannot be calibrated now (%s)", k, _short(exc))
            found = saved_calibration(cfg, paths, k)
        if found is None:
            log.warning("safe inference: fold %d has no calibration.json: its raw logits are used, and the OOF "
                        "threshold (fitted on calibrated probabilities) may not suit them", k)
            found = Calibration()
        out[k] = found
    return out


def make_predictor(cfg: Config, paths: RunPaths, runtime: Runtime, fast: bool) -> SafePredictor:
    models = load_models(cfg, paths, runtime)
    views = parse_tta(["identity"] if fast else cfg.predict.tta)
    return SafePredictor(models, runtime, input_fit(cfg.model), views, cfg.predict.batch_size,
                         load_calibrations(dataclasses.replace(cfg, predict=dataclasses.replace(
                             cfg.predict, tta=[v.name for v in views])), paths, runtime, sorted(models)))


def item_shape(cfg: Config) -> tuple[int, int]:
    """(height, width) of a stage-1 image: the aligned face, or a speech window."""
    if cfg.data.modality == "audio":
        return cfg.audio.n_mels, cfg.audio.frames
    return cfg.align.size, cfg.align.size


@dataclass
class Answer:
    """What the models said of one input (a face, or a clip's windows)."""

    logit: float = float("nan")  # mean calibrated log-odds; NaN when nothing could be judged
    decode_error: str | None = None  # the first stage-1 image of the input that did not decode
    model_error: str | None = None  # why no model judged it (when no image did)
    partial: str | None = None  # what was left out of an answer that exists: windows, folds

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.logit))


def _predict_paths(cfg: Config, predictor: SafePredictor, groups: list[list[Path]]) -> list[Answer]:
    """An :class:`Answer` per group of stage-1 images (one face, or a clip's windows): the mean logit
    over the images that decoded and ran; what was left out is said in ``partial``, never dropped
    silently."""
    flat = [p for group in groups for p in group]
    logits, decode_errors, model_errors, fold_notes = predict_files(
        predictor, flat, item_shape(cfg), cfg.run.workers, cfg.predict.batch_size, cfg.run.progress)
    answers = []
    at = 0
    for group in groups:
        part = slice(at, at + len(group))
        at += len(group)
        values = logits[part]
        ok = np.isfinite(values)
        answer = Answer(decode_error=next((e for e in decode_errors[part] if e), None))
        if ok.any():
            answer.logit = float(values[ok].mean())
            notes = []
            if not ok.all():
                why = answer.decode_error or next((e for e in model_errors[part] if e), "no prediction")
                notes.append(f"{int(ok.sum())} of {len(group)} windows judged ({why})")
            notes += sorted({n for n, good in zip(fold_notes[part], ok) if n and good})
            answer.partial = "; ".join(notes) or None
        elif group:
            answer.model_error = None if answer.decode_error else next((e for e in model_errors[part] if e),
                                                                       "no prediction")
        answers.append(answer)
    return answers


def safe_inference(cfg: Config, paths: RunPaths, runtime: Runtime, out: Path, fast: bool = False) -> SafeResult:
    """Write ``out`` (Id,target_feature for every test Id), ``problems.csv`` and ``<out>_probs.csv`` beside it."""
    predictor = make_predictor(cfg, paths, runtime, fast)
    threshold = threshold_or_default(paths, cfg)
    test, prior = test_set_and_prior(cfg, paths)
    test_ids = list(test)
    have, redo, why = aligned_faces(cfg, test_ids, trained_stage1_hashes(cfg, paths, sorted(predictor.models)))
    answers: dict[str, Answer] = {}
    source: dict[str, str] = {}
    status = {i: have[i][1] for i in have}
    reasons: dict[str, str] = dict(redo)

    # 1. Stage-1 images on disk (align_faces.py, prepare_audio.py); an input any of whose images does not
    #    decode goes through stage 1 again below, as do inputs with missing or stale images.
    ids = [i for i in test_ids if i in have]
    again = [i for i in test_ids if i in redo]
    for i, answer in zip(ids, _predict_paths(cfg, predictor, [have[i][0] for i in ids])):
        if answer.decode_error is not None:
            again.append(i)
            reasons[i] = f"stage-1 image unreadable ({answer.decode_error})"
        elif not answer.ok:
            reasons[i] = answer.model_error or "no prediction"
        else:
            answers[i], source[i] = answer, "aligned"
    # 2. The rest from the raw inputs, through stage 1 now.
    missing = [i for i in test_ids if i not in have and i not in redo]
    if missing:
        log.warning("safe inference: %d test input(s) without a stage-1 image (%s): stage 1 on the fly",
                    len(missing), why or f"not in {stage1_out(cfg) / 'faces.csv'} or file missing")
    todo = missing + again
    if todo:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".safe_faces_", dir=out.parent) as tmp:
            aligned = on_the_fly(cfg, runtime.device, Path(tmp)).align([test[i] for i in todo])
            ready = [(i, a) for i, a in zip(todo, aligned) if a.items]
            for i, a in zip(todo, aligned):
                status[i] = a.status
                if not a.items:
                    what = "raw input unreadable" if a.status == "unreadable" else f"raw input {a.status}"
                    reasons[i] = "; ".join(filter(None, [reasons.get(i), f"{what}: {a.note}"]))
            for (i, _), answer in zip(ready, _predict_paths(cfg, predictor, [a.items for _, a in ready])):
                if answer.ok:
                    answers[i], source[i] = answer, "realigned"
                    reasons.pop(i, None)
                else:
                    reasons[i] = "; ".join(filter(None, [reasons.get(i), answer.decode_error or answer.model_error]))
    # 3. Anything left gets the training prior, labelled as every answer is (submission.prior_answer).
    prior_prob, prior_label = prior_answer(prior, threshold)
    probs_out = [float(sigmoid(answers[i].logit)) if i in answers else prior_prob for i in test_ids]
    labels = [int(call_fake(p, threshold)) if i in answers else prior_label for i, p in zip(test_ids, probs_out)]
    for i in test_ids:
        if i not in answers:
            source[i] = "prior"
            reasons.setdefault(i, "no prediction")
    submission = pd.DataFrame({"Id": test_ids, "target_feature": labels})
    validate_submission(submission, test_ids)
    answered = [k for k, i in enumerate(test_ids) if i in answers]
    check_score_shift(np.array([probs_out[k] for k in answered]), paths.oof_csv,
                      float(np.mean([labels[k] for k in answered])) if answered else float("nan"), "safe inference")
    probs = pd.DataFrame({"Id": test_ids, "prob": probs_out, "source": [source[i] for i in test_ids],
                          "status": [status.get(i, "") for i in test_ids]})
    problems = pd.DataFrame(
        [{"Id": i, "answer": "prior", "reason": reasons[i], "prob": p, "target_feature": y}
         if source[i] == "prior" else
         {"Id": i, "answer": "partial", "reason": answers[i].partial, "prob": p, "target_feature": y}
         for i, p, y in zip(test_ids, probs_out, labels) if source[i] == "prior" or answers[i].partial],
        columns=PROBLEM_COLUMNS)
    for row in problems.head(10).itertuples():
        log.warning("safe inference: %s: %s (%s)", row.Id, f"the prior class {row.target_feature}"
                    if row.answer == "prior" else "judged from part of it", row.reason)
    save_csv(out.with_name(out.stem + "_probs.csv"), probs)
    save_csv(out.parent / "problems.csv", problems)
    save_csv(out, submission)
    return SafeResult(submission, probs, problems, sorted(predictor.models), threshold, prior,
                      predictor.batch_size, predictor.halvings, out)


def list_inputs(path: Path) -> list[Path]:
    """One file, or every visible file of a folder (sorted); each one gets a row."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    raise PipelineError(f"--input {path}: no such file or folder")


def inspect_images(cfg: Config, paths: RunPaths, runtime: Runtime, inputs: list[Path], fast: bool = False
                   ) -> pd.DataFrame:
    """Id (file name), prob, label (1 fake / 0 real; empty when unanswered), status, note per input file."""
    predictor = make_predictor(cfg, paths, runtime, fast)
    threshold = threshold_or_default(paths, cfg)
    rows = []
    with tempfile.TemporaryDirectory(prefix="safe_faces_") as tmp:
        aligned = on_the_fly(cfg, runtime.device, Path(tmp)).align(inputs)
        ready = [k for k, a in enumerate(aligned) if a.items]
        result = dict(zip(ready, _predict_paths(cfg, predictor, [aligned[k].items for k in ready])))
    for k, (src, a) in enumerate(zip(inputs, aligned)):
        answer = result.get(k, Answer())
        p = float(sigmoid(answer.logit)) if answer.ok else np.nan
        note = answer.partial if answer.ok else (answer.decode_error or answer.model_error)
        rows.append({"Id": src.name, "prob": p, "label": int(call_fake(p, threshold)) if answer.ok else pd.NA,
                     "status": a.status, "note": "; ".join(filter(None, [a.note, note]))})
    frame = pd.DataFrame(rows, columns=["Id", "prob", "label", "status", "note"])
    frame["label"] = frame["label"].astype("Int64")
    judged = frame["label"].notna()
    check_score_shift(frame.loc[judged, "prob"].to_numpy(), paths.oof_csv,
                      float(frame.loc[judged, "label"].mean()) if judged.any() else float("nan"), "--input")
    return frame


def iter_lines(frame: pd.DataFrame) -> Iterator[str]:
    """A readable table of :func:`inspect_images` rows."""
    yield f"{'Id':<32} {'prob':>7}  {'label':<5}  {'status':<10} note"
    for r in frame.itertuples(index=False):
        prob = f"{r.prob:.4f}" if pd.notna(r.prob) else "-"
        label = "-" if pd.isna(r.label) else ("fake" if int(r.label) else "real")
        yield f"{r.Id:<32} {prob:>7}  {label:<5}  {r.status:<10} {r.note}"
