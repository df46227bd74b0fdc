"""Export to ONNX and TorchScript: the matmul DFT, parity with PyTorch, the dynamic batch, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_pipeline import export
from deepfake_pipeline.cli import run_main
from deepfake_pipeline.features import fft_log_amplitude

from .helpers import run_cli, tiny_config

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """One finished 2-fold x 1-epoch fine-tune from scratch on whole-image 64 px faces."""
    base = tmp_path_factory.mktemp("export")
    cfg = tiny_config(base, demo_root, "finetune: {epochs: 1}")
    align = run_cli(["align_faces.py", "--config", str(cfg)])
    assert align.returncode == 0, align.stderr
    train = run_cli(["train.py", "--config", str(cfg), "--stage", "finetune", "--set", "finetune.init=scratch"])
    assert train.returncode == 0, train.stderr
    return base / "runs" / "t"


@pytest.fixture(scope="module")
def reference(tiny_run: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """Fold 0's PyTorch classifier and 3 uint8 check images (aligned test faces)."""
    cfg = export.load_run_config(tiny_run)
    images, source = export.parity_images(cfg, n=3)
    assert source == "3 aligned test faces"
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 64, 64)
    return export.load_classifier(cfg, tiny_run, 0), images


def _check_batches(path: Path, fmt: str, classifier: torch.nn.Module, images: torch.Tensor) -> None:
    """Batches of 3 and 1 through the exported file match PyTorch (the batch axis is dynamic)."""
    for batch in (images, images[:1]):
        prob, logit = export.run_exported(path, fmt, batch)
        ref_prob, ref_logit = export.reference_outputs(classifier, batch)
        assert prob.shape == logit.shape == (len(batch),)
        assert np.abs(prob - ref_prob).max() < TOLERANCE
        assert np.abs(logit - ref_logit).max() < 1e-2
        assert np.allclose(prob, 1.0 / (1.0 + np.exp(-logit)), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 37, 50), (2, 1, 16, 9)])
def test_matmul_dft_equals_fft_log_amplitude(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen)
    got = export.DftLogAmplitude(shape[-2], shape[-1])(x)
    assert torch.allclose(got, fft_log_amplitude(x), atol=1e-4, rtol=0)
    flat = torch.full(shape, 0.25)  # all energy in the DC bin, which fftshift puts at (H // 2, W // 2)
    dc = export.DftLogAmplitude(shape[-2], shape[-1])(flat)
    assert torch.allclose(dc, fft_log_amplitude(flat), atol=1e-4, rtol=0)


def test_matmul_dft_is_accurate_at_larger_sizes() -> None:
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    truth = torch.fft.fftshift(torch.log1p(torch.fft.fft2(x.double()).abs()), dim=(-2, -1))
    assert (export.DftLogAmplitude(256, 256)(x).double() - truth).abs().max() < 1e-4


def test_onnx_cli_export_parity_and_dynamic_batch(tiny_run: Path, reference: tuple, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    proc = run_cli(["-m", "deepfake_pipeline.export", "--run", str(tiny_run), "--fold", "0", "--format", "onnx",
                    "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "max |dprob|" in proc.stderr
    sidecar = json.loads(out.with_name("model.onnx.json").read_text())
    assert sidecar["parity"]["max_abs_diff_prob"] < TOLERANCE
    assert sidecar["parity"]["images"] == "8 aligned test faces"
    assert sidecar["opset"] == 17 and sidecar["exporter"] == "legacy" and sidecar["fft"] == "matmul"
    assert sidecar["threshold"] == json.loads((tiny_run / "threshold.json").read_text())["threshold"]
    assert sidecar["max_real_fpr"] is None and sidecar["threshold_rule"] == "the OOF F1 threshold"
    assert not list(tmp_path.glob(".*.tmp"))

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]
    assert [o.name for o in session.get_outputs()] == ["prob", "logit"]
    _check_batches(out, "onnx", *reference)


def test_torchscript_export_parity_and_dynamic_batch(tiny_run: Path, reference: tuple, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    result = export.export_fold(tiny_run, 0, "torchscript", out=out, n_images=4)
    assert result.max_abs_diff_prob < TOLERANCE and result.fft == "native"
    assert result.images == "4 aligned test faces"
    _check_batches(out, "torchscript", *reference)


def test_onnx_legacy_opset_13_with_default_output_path(tiny_run: Path, reference: tuple) -> None:
    result = export.export_fold(tiny_run, 1, "onnx", opset=13, n_images=2)
    assert result.path == tiny_run / "export" / "fold1.onnx" and result.path.is_file()
    assert export.onnx_opset(result.path) == 13
    assert result.max_abs_diff_prob < TOLERANCE


def test_onnx_dynamo_with_native_fft(tiny_run: Path, reference: tuple, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    out = tmp_path / "dynamo.onnx"
    result = export.export_fold(tiny_run, 0, "onnx", out=out, exporter="dynamo", fft="native", n_images=2)
    assert result.opset == 18  # ONNX DFT
    _check_batches(out, "onnx", *reference)


def test_random_images_without_aligned_faces(tiny_run: Path) -> None:
    cfg = export.load_run_config(tiny_run)
    cfg.align.out = str(tiny_run / "no-faces-here")
    first, source = export.parity_images(cfg, n=4, seed=7)
    again, _ = export.parity_images(cfg, n=4, seed=7)
    assert source == "4 random images" and torch.equal(first, again)
    assert first.dtype == torch.uint8 and first.shape == (4, 3, 64, 64)


def test_parity_failure_exits_2_and_writes_nothing(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real = export.reference_outputs

    def shifted(classifier: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        prob, logit = real(classifier, images)
        return np.clip(prob + 0.01, 0, 1), logit

    monkeypatch.setattr(export, "reference_outputs", shifted)
    out = tmp_path / "bad.onnx"
    argv = ["--run", str(tiny_run), "--fold", "0", "--out", str(out), "--check-images", "2"]
    assert run_main(export.main, argv) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_user_errors_exit_2(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_main(export.main, ["--run", str(tmp_path), "--fold", "0"]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
    assert run_main(export.main, ["--run", str(tiny_run), "--fold", "5"]) == 2
    assert "folds 0..1" in capsys.readouterr().err
    argv = ["--run", str(tiny_run), "--fold", "0", "--fft", "native", "--exporter", "legacy"]
    assert run_main(export.main, argv) == 2
    assert "--exporter dynamo" in capsys.readouterr().err
