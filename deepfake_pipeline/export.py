"""Export one fold's classifier to ONNX or TorchScript, checked against PyTorch before it is kept.

    python -m deepfake_pipeline.export --run weights/<run> --fold 0 --format onnx
    python -m deepfake_pipeline.export --run weights/<run> --fold 0 --format torchscript --out model.pt

The exported model is self-contained: input ``image``, a uint8 RGB batch (B, 3, H, W) with
H = W = ``model.img_size`` of the run (with ``model.fit: resize`` the aligned face resized to
that size, with ``crop`` its centre window, as ``augment.centre_crop`` cuts it; the batch axis is
dynamic); the forensic channels (RGB normalisation, FFT log-amplitude, SRM residuals) are computed
inside. Outputs, both shape (B,): ``prob`` = sigmoid(logit) = P(fake), and ``logit``. One view,
one fold: no TTA, no fold ensemble. Label with ``prob >= threshold`` (``threshold.json``; copied
into the ``<out>.json`` sidecar written beside the model).

ONNX and the FFT (torch 2.15, onnx 1.23, onnxruntime 1.31): the legacy TorchScript-based exporter
has no symbolic for ``aten::fft_fft2`` at any opset; the dynamo exporter (needs ``onnxscript``)
maps it to ONNX ``DFT`` from opset 18. So by default (``fft="matmul"``) the ONNX wrapper computes
the 2-D DFT as two real matmuls with precomputed cos/sin matrices for the fixed input size (the
fftshift folded into their row order): the same log-amplitude as :func:`~.features.fft_log_amplitude`
up to float32 rounding, and it exports with either exporter at any opset. TorchScript traces the
native ``torch.fft`` by default.

The file is exported to a temporary path, run there on a few images (the run's aligned test faces
when they are on disk, else deterministic random images) with onnxruntime / ``torch.jit.load`` and
compared with the PyTorch model; only when the largest probability difference is within the
tolerance does it replace ``--out`` (:class:`ExportParityError`, exit code 2, otherwise).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .artifacts import RunPaths
from .config import Config
from .errors import ConfigError, PipelineError
from .features import ForensicInput, srm_residuals, standardize
from .images import atomic_path, atomic_write_text
from .trained import threshold_and_rule, threshold_rule

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("legacy", "dynamo")
FFT_IMPLS = ("matmul", "native")
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}  # dynamo: ONNX DFT needs opset >= 18 (and ReduceL2 breaks at 17)
INPUT_NAME = "image"
OUTPUT_NAMES = ("prob", "logit")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportParityError(PipelineError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


# ----------------------------------------------------------------------------- the FFT as matmuls


def dft_matrices(n: int, shift: bool = True) -> tuple[Tensor, Tensor]:
    """(cos, sin) of the n-point DFT, float64, rows = frequencies (fftshift'ed when ``shift``).

    DFT(x)[k] = sum_j x[j] * (cos - i sin)(2 pi k j / n). With ``shift`` row r holds frequency
    (r - n // 2) mod n, so DC lands at row n // 2 as after ``torch.fft.fftshift``.
    """
    rows = torch.arange(n, dtype=torch.int64)
    freq = (rows - n // 2) % n if shift else rows
    # k * j mod n keeps the angle exact in float64 even for large n.
    angle = (freq[:, None] * torch.arange(n, dtype=torch.int64)[None, :]) % n
    theta = angle.double() * (2.0 * np.pi / n)
    return torch.cos(theta), torch.sin(theta)


class DftLogAmplitude(nn.Module):
    """log(1 + |DFT2(x)|), fftshift'ed, for a fixed (H, W): :func:`~.features.fft_log_amplitude`
    as two real matmuls, for exporters without FFT ops.

    Columns: P = [C_H; -S_H] @ x stacks Re/Im of the DFT along H, shape (..., 2H, W). Rows: with
    A + iB that column DFT, [A | B] @ [[C_W^T, -S_W^T], [S_W^T, C_W^T]] = [Re | Im] of the 2-D DFT.
    The per-channel mean is taken out first and its term (mean * H * W) added back at the DC bin:
    the same DFT, without the cancellation that a large DC term costs the other bins in float32
    (against a float64 FFT at 512 px: 1.3e-4 max error, torch.fft in float32 1.2e-3).
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        ch, sh = dft_matrices(height)
        cw, sw = dft_matrices(width)
        left = torch.cat([ch, -sh], dim=0)  # (2H, H)
        right = torch.cat([torch.cat([cw.T, -sw.T], dim=1), torch.cat([sw.T, cw.T], dim=1)], dim=0)  # (2W, 2W)
        self.register_buffer("left", left.float(), persistent=False)
        self.register_buffer("right", right.float(), persistent=False)
        dc = torch.zeros(height, width)
        dc[height // 2, width // 2] = float(height * width)  # fftshift'ed DC bin, times the sum's count
        self.register_buffer("dc", dc, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        mean = x.mean(dim=(-2, -1), keepdim=True)
        p = torch.matmul(self.left, x - mean)  # (..., 2H, W)
        ab = torch.cat([p[..., : self.height, :], p[..., self.height :, :]], dim=-1)  # (..., H, 2W)
        z = torch.matmul(ab, self.right)
        re = z[..., : self.width] + mean * self.dc
        im = z[..., self.width :]
        return torch.log1p(torch.sqrt(re * re + im * im))

    def extra_repr(self) -> str:
        return f"size=({self.height}, {self.width})"


class MatmulForensicInput(nn.Module):
    """:class:`~.features.ForensicInput` for a fixed input size, with the FFT done by :class:`DftLogAmplitude`."""

    def __init__(self, forensic: ForensicInput, size: int) -> None:
        super().__init__()
        self.channels = list(forensic.channels)
        self.register_buffer("mean", forensic.mean.detach().clone().float(), persistent=False)
        self.register_buffer("std", forensic.std.detach().clone().float(), persistent=False)
        self.register_buffer("srm_weight", forensic.srm_weight.detach().clone().float(), persistent=False)
        self.fft = DftLogAmplitude(size, size)

    def forward(self, x: Tensor) -> Tensor:
        parts = []
        for name in self.channels:
            if name == "rgb":
                parts.append((x - self.mean) / self.std)
            elif name == "fft":
                parts.append(standardize(self.fft(x)))
            else:
                parts.append(srm_residuals(x, self.srm_weight))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class ExportModel(nn.Module):
    """uint8 RGB (B, 3, S, S) -> (prob, logit), each (B,): what gets exported."""

    def __init__(self, classifier: nn.Module, img_size: int, fft: str = "matmul") -> None:
        super().__init__()
        if fft not in FFT_IMPLS:
            raise ConfigError(f"fft: {fft!r} is not one of {', '.join(FFT_IMPLS)}")
        self.img_size = img_size
        self.classifier = copy.deepcopy(classifier).eval()
        if fft == "matmul":
            self.classifier.forensic = MatmulForensicInput(classifier.forensic, img_size)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        logit = self.classifier(image.float() / 255.0)
        return torch.sigmoid(logit), logit


# ----------------------------------------------------------------------------- the run's model and images


def load_run_config(run_dir: str | Path) -> Config:
    """The run's saved ``config.yaml`` (``run.dir`` = ``run_dir``), with pretrained loading off."""
    from .trained import load_run_config as saved_config

    cfg = saved_config(run_dir)
    # The fold weights replace every tensor: never fetch pretrained weights just to overwrite them.
    cfg.model = dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None)
    return cfg


def load_classifier(cfg: Config, run_dir: str | Path, fold: int) -> nn.Module:
    """The fold's ``best.safetensors`` in the run's classifier, on the CPU, in eval mode."""
    from .runtime import Runtime
    from .trained import load_fold_model

    if not 0 <= fold < cfg.finetune.folds:
        raise PipelineError(f"--fold {fold}: the run has folds 0..{cfg.finetune.folds - 1}")
    return load_fold_model(cfg, RunPaths(Path(run_dir)), fold, Runtime(torch.device("cpu"))).float().eval()


def parity_images(cfg: Config, n: int = 8, seed: int = 0) -> tuple[Tensor, str]:
    """Up to ``n`` uint8 (n, 3, S, S) check images: the run's aligned test faces (fitted to
    ``img_size`` as prediction fits them) when at least 2 are on disk, else ``n`` deterministic random
    images."""
    from .artifacts import load_faces, usable_faces
    from .augment import centre_crop
    from .dataset import FaceDataset

    size = cfg.model.img_size
    try:
        faces = usable_faces(load_faces(cfg), "test")
        paths = [p for p in faces["path"] if Path(p).is_file()][:n]
    except (PipelineError, OSError, ValueError):
        paths = []
    if len(paths) >= 2:  # one face would not exercise the batch axis
        data = FaceDataset(paths, size=size if cfg.model.fit == "resize" else None)
        faces_u8 = torch.stack([data[i][0] for i in range(len(paths))])
        if cfg.model.fit == "crop":
            faces_u8 = centre_crop(faces_u8.float(), size, cfg.model.crop_grid).to(torch.uint8)
        return faces_u8, f"{len(paths)} aligned test faces"
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8), f"{n} random images"


# ----------------------------------------------------------------------------- export and run


def _onnx_export(module: nn.Module, sample: Tensor, path: Path, opset: int, exporter: str) -> None:
    kwargs: dict = dict(input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=opset)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise PipelineError("--exporter dynamo needs the onnxscript package (pip install onnxscript)") from exc
        batch = torch.export.Dim("batch", min=1)
        kwargs.update(dynamo=True, dynamic_shapes={"image": {0: batch}}, external_data=False, optimize=True,
                      verbose=False)
    else:
        axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
        kwargs.update(dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer chatter; real failures raise
        try:
            torch.onnx.export(module, (sample,), str(path), **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PipelineError(f"ONNX export ({exporter}, opset {opset}) failed: {type(exc).__name__}: {first}") from exc


def _torchscript_export(module: nn.Module, sample: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (sample,), check_trace=False)
        torch.jit.save(traced, str(path))


def onnx_opset(path: str | Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def run_exported(path: str | Path, fmt: str, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(prob, logit) of an exported file for a uint8 batch, float64 numpy (onnxruntime / torch.jit, CPU)."""
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        prob, logit = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            prob, logit = (t.numpy() for t in loaded(images))
    return np.asarray(prob, dtype=np.float64), np.asarray(logit, dtype=np.float64)


@torch.no_grad()
def reference_outputs(classifier: nn.Module, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(prob, logit) of the PyTorch classifier itself (native FFT), as the pipeline computes them."""
    logit = classifier.eval()(images.float() / 255.0).double()
    return torch.sigmoid(logit).numpy(), logit.numpy()


@dataclass
class ExportResult:
    path: Path
    format: str
    fold: int
    img_size: int
    fft: str
    exporter: str | None
    opset: int | None
    images: str  # what the parity check ran on
    max_abs_diff_prob: float
    max_abs_diff_logit: float
    tolerance: float
    seconds: float

    def summary(self) -> str:
        how = f"{self.exporter} exporter, opset {self.opset}, " if self.format == "onnx" else ""
        return (
            f"export: fold {self.fold} -> {self.path} ({self.format}, {how}fft={self.fft}, "
            f"uint8 input {self.img_size}x{self.img_size}); parity on {self.images}: max |dprob| "
            f"{self.max_abs_diff_prob:.2e}, max |dlogit| {self.max_abs_diff_logit:.2e} (tolerance {self.tolerance:g}); "
            f"{self.seconds:.1f} s"
        )


def default_out(run_dir: str | Path, fold: int, fmt: str) -> Path:
    return Path(run_dir) / "export" / f"fold{fold}{SUFFIX[fmt]}"


@torch.no_grad()
def export_fold(
    run_dir: str | Path,
    fold: int,
    fmt: str = "onnx",
    out: str | Path | None = None,
    opset: int | None = None,
    exporter: str = "legacy",
    fft: str | None = None,
    tolerance: float = 1e-3,
    n_images: int = 8,
) -> ExportResult:
    """Export fold ``fold`` of ``run_dir``; check it on ``n_images`` images; write ``out`` + ``out.json``."""
    started = time.time()
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter: {exporter!r} is not one of {', '.join(EXPORTERS)}")
    fft = fft or ("matmul" if fmt == "onnx" else "native")
    if fmt == "onnx" and fft == "native" and exporter == "legacy":
        raise ConfigError("--fft native with ONNX needs --exporter dynamo (the legacy exporter has no FFT op)")
    if fmt == "onnx":
        opset = opset or DEFAULT_OPSET[exporter]
    if n_images < 2:
        raise ConfigError("--check-images: at least 2 (the check runs a batch and a single image)")
    cfg = load_run_config(run_dir)
    classifier = load_classifier(cfg, run_dir, fold)
    size = cfg.model.img_size
    module = ExportModel(classifier, size, fft).eval()
    images, source = parity_images(cfg, n_images, seed=cfg.run.seed)
    ref_prob, ref_logit = reference_outputs(classifier, images)
    out = Path(out) if out is not None else default_out(run_dir, fold, fmt)
    sample = images[:2]  # batch > 1: torch.export would specialise a batch of 1
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _onnx_export(module, sample, tmp, opset, exporter)
            written = onnx_opset(tmp)
            if written != opset:  # the dynamo exporter writes opset 18 when asked for less
                log.warning("export: opset %d asked for, the %s exporter wrote opset %d", opset, exporter, written)
                opset = written
        else:
            _torchscript_export(module, sample, tmp)
        prob, logit = run_exported(tmp, fmt, images)
        single, _ = run_exported(tmp, fmt, images[:1])  # the dynamic batch axis answers a batch of 1 too
        prob_diff = float(max(np.abs(prob - ref_prob).max(), np.abs(single - ref_prob[:1]).max()))
        logit_diff = float(np.abs(logit - ref_logit).max())
        if not prob_diff <= tolerance:  # NaN fails too
            raise ExportParityError(
                f"{fmt} export of fold {fold} differs from PyTorch by {prob_diff:.3g} in probability "
                f"(tolerance {tolerance:g}) on {source}; nothing written to {out}"
            )
    result = ExportResult(
        path=out, format=fmt, fold=fold, img_size=size, fft=fft, exporter=exporter if fmt == "onnx" else None,
        opset=opset if fmt == "onnx" else None, images=source, max_abs_diff_prob=prob_diff,
        max_abs_diff_logit=logit_diff, tolerance=tolerance, seconds=round(time.time() - started, 1),
    )
    _write_sidecar(result, cfg, RunPaths(Path(run_dir)))
    return result


def _write_sidecar(result: ExportResult, cfg: Config, paths: RunPaths) -> None:
    threshold, rule = None, None
    if paths.threshold_json.is_file():
        try:  # under the configured rule: chosen again from oof.csv where threshold.json has another
            threshold, rule = threshold_and_rule(paths, cfg)
        except (OSError, ValueError, KeyError, TypeError, PipelineError) as exc:
            log.warning("export: no threshold in the sidecar (%s unreadable: %s)", paths.threshold_json, exc)
    record = {
        "model": result.path.name, "format": result.format, "run": str(paths.root), "fold": result.fold,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "RGB, (batch, 3, H, W)",
                  "shape": ["batch", 3, result.img_size, result.img_size]},
        "outputs": {"prob": "sigmoid(logit) = P(fake), (batch,)", "logit": "(batch,)"},
        "threshold": threshold, "decision": "fake when prob >= threshold",
        "threshold_rule": None if threshold is None else threshold_rule(rule), "max_real_fpr": rule,
        "backbone": cfg.model.backbone, "channels": list(cfg.model.channels),
        "fft": result.fft, "exporter": result.exporter, "opset": result.opset,
        "parity": {"images": result.images, "max_abs_diff_prob": result.max_abs_diff_prob,
                   "max_abs_diff_logit": result.max_abs_diff_logit, "tolerance": result.tolerance},
        "torch": torch.__version__,
    }
    atomic_write_text(result.path.with_name(result.path.name + ".json"), json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory, e.g. weights/<run> (holds config.yaml)")
    parser.add_argument("--fold", type=int, required=True, help="which fold's best.safetensors to export")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", help="output file (default: <run>/export/fold<k>.onnx or .torchscript.pt)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: 17 legacy, 18 dynamo)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="legacy",
                        help="ONNX exporter: legacy (TorchScript-based) or dynamo (needs onnxscript)")
    parser.add_argument("--fft", choices=FFT_IMPLS,
                        help="FFT inside the model: matmul (DFT matrices; ONNX default) or native (torch.fft; "
                             "TorchScript default; ONNX only with --exporter dynamo)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |prob difference| (default: %(default)s)")
    parser.add_argument("--check-images", type=int, default=8, help="images in the parity check")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    result = export_fold(
        args.run, args.fold, args.format, out=args.out, opset=args.opset, exporter=args.exporter, fft=args.fft,
        tolerance=args.tolerance, n_images=args.check_images,
    )
    log.info(result.summary())
    return 0


if __name__ == "__main__":
    from .cli import run_main

    sys.exit(run_main(main))
