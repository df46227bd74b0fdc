"""Forensic input channels: shapes, FFT of constant images, SRM residual properties."""

from __future__ import annotations

import pytest
import torch

from deepfake_pipeline.errors import ConfigError
from deepfake_pipeline.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ForensicInput,
    fft_log_amplitude,
    srm_weight,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: OpenMP threads cost more than they give, and stall badly on a busy 2-core CPU
    # (a SimMIM step went from 1.7 s to 0.03 s). Restored afterwards for other test modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "channels", [["rgb"], ["fft"], ["srm"], ["rgb", "fft"], ["srm", "rgb"], ["rgb", "fft", "srm"]]
)
@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_shapes_and_channel_counts(channels: list[str], size: tuple[int, int]) -> None:
    module = ForensicInput(channels)
    assert module.out_channels == 3 * len(channels)
    out = module(torch.rand(2, 3, *size))
    assert out.shape == (2, 3 * len(channels), *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_groups_follow_the_requested_order() -> None:
    x = torch.rand(2, 3, 32, 32)
    full = ForensicInput(["srm", "rgb", "fft"])(x)
    assert torch.equal(full[:, 0:3], ForensicInput(["srm"])(x))
    assert torch.equal(full[:, 3:6], ForensicInput(["rgb"])(x))
    assert torch.equal(full[:, 6:9], ForensicInput(["fft"])(x))


def test_rgb_is_imagenet_normalised() -> None:
    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert ForensicInput(["rgb"])(x).abs().max() < 1e-6
    ones = ForensicInput(["rgb"])(torch.ones(1, 3, 4, 4))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(ones[0, :, 0, 0], expected)


@pytest.mark.parametrize("bad", [[], ["rgb", "noise"], ["rgb", "rgb"]])
def test_bad_channel_lists_are_config_errors(bad: list[str]) -> None:
    with pytest.raises(ConfigError):
        ForensicInput(bad)


@pytest.mark.parametrize("size", [(32, 32), (31, 20)])
def test_fft_of_a_constant_image_is_all_dc(size: tuple[int, int]) -> None:
    h, w = size
    x = torch.full((1, 3, h, w), 0.7)
    amp = fft_log_amplitude(x)
    centre = amp[..., h // 2, w // 2]
    assert torch.allclose(centre, torch.log1p(torch.tensor(0.7 * h * w)).expand_as(centre), rtol=1e-5)
    off = amp.clone()
    off[..., h // 2, w // 2] = 0
    assert off.abs().max() < 1e-4  # all the energy is at the centre after fftshift
    out = ForensicInput(["fft"])(x)
    assert torch.isfinite(out).all()
    flat = out.flatten(2)
    assert (flat.argmax(dim=-1) == (h // 2) * w + w // 2).all()
    assert torch.allclose(flat.mean(-1), torch.zeros(1, 3), atol=1e-5)
    assert torch.allclose(flat.std(-1, unbiased=False), torch.ones(1, 3), atol=1e-3)


def test_fft_of_a_black_image_is_finite_zero() -> None:
    out = ForensicInput(["fft"])(torch.zeros(2, 3, 16, 16))
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_srm_kernels_sum_to_zero() -> None:
    weight = srm_weight()
    assert weight.shape == (3, 3, 5, 5)
    assert weight.sum(dim=(1, 2, 3)).abs().max() < 1e-7
    assert torch.equal(weight[:, 0], weight[:, 2])  # same filter on R, G and B


@pytest.mark.parametrize("value", [0.0, 0.3, 1 / 3, 1.0])
def test_srm_of_a_flat_image_is_exactly_zero(value: float) -> None:
    x = torch.full((2, 3, 40, 33), value)
    x[1] = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1)  # flat per channel, channels differ
    out = ForensicInput(["srm"])(x)
    assert torch.count_nonzero(out) == 0


def test_srm_responds_to_noise_and_is_clipped() -> None:
    out = ForensicInput(["srm"])(torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    assert (out != 0).float().mean() > 0.9
    assert out.abs().max() <= 3.0
    assert out.std() > 0.1


def test_srm_ignores_a_constant_offset_and_smooth_gradients_are_small() -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.5
    module = ForensicInput(["srm"])
    assert torch.allclose(module(x), module(x + 0.25), atol=1e-4)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    inner = module(ramp)[..., 4:-4, 4:-4]  # a linear ramp has no 2nd/3rd order residual
    assert inner.abs().max() < 1e-3


def test_channels_last_and_autocast() -> None:
    x = torch.rand(2, 3, 32, 48)
    module = ForensicInput(["rgb", "fft", "srm"])
    ref = module(x)
    out = module(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_out = module(x.to(torch.bfloat16))
    assert amp_out.dtype == torch.float32  # computed in float32 regardless of autocast
    assert torch.allclose(amp_out, module(x.to(torch.bfloat16).float()), atol=1e-5)


def test_buffers_follow_the_module_and_are_not_saved() -> None:
    module = ForensicInput(["rgb", "srm"]).to(torch.float64)
    assert module.state_dict() == {}
    assert module(torch.rand(1, 3, 16, 16)).dtype == torch.float32
