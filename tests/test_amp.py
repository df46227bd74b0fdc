"""Mixed precision: the policy that picks bf16 or fp16 + GradScaler, and both paths run on the CPU.

Kaggle's notebook GPUs (T4, P100) have no bf16 in hardware: they must get fp16 with a GradScaler;
A100/H100 get bf16. torch.amp runs both precisions on the CPU, so CI exercises the GPU code paths:
autocast, the scaler's unscale/clip/step/update, and the skipped step of an fp16 overflow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from deepfake_pipeline import runtime as rt_mod
from deepfake_pipeline.config import ModelConfig, OptimConfig
from deepfake_pipeline.engine import LoopSpec, TrainLoop, to_device_float
from deepfake_pipeline.model import build_classifier
from deepfake_pipeline.runtime import Runtime, amp_policy, use_channels_last


@pytest.mark.parametrize(("capability", "emulated", "amp", "expected"), [
    ((7, 5), True, "auto", (torch.float16, True)),  # T4: bf16 only emulated -> fp16 + GradScaler
    ((7, 0), True, "auto", (torch.float16, True)),  # V100
    ((6, 0), False, "auto", (torch.float16, True)),  # P100
    ((8, 0), True, "auto", (torch.bfloat16, False)),  # A100
    ((9, 0), True, "auto", (torch.bfloat16, False)),  # H100
    ((7, 5), True, "bf16", (torch.bfloat16, False)),  # asked for: honoured
    ((8, 0), True, "fp16", (torch.float16, True)),
    ((8, 0), True, "off", (None, False)),
])
def test_amp_policy_asks_for_bf16_in_hardware(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                              emulated: bool, amp: str, expected: tuple) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # is_bf16_supported() counts emulation: on a T4 it says yes. The policy must not believe it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: emulated)
    assert amp_policy(torch.device("cuda:0"), amp) == expected


def test_amp_policy_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert amp_policy(cpu, "auto") == (None, False)  # fp32 by default
    assert amp_policy(cpu, "bf16") == (torch.bfloat16, False)
    assert amp_policy(cpu, "fp16") == (torch.float16, True)
    assert rt_mod.init_runtime("cpu", "fp16").use_scaler


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_a_cpu_without_it_warns(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                        has_bf16: bool) -> None:
    # configs/audio.yaml asks for bf16: fast on a CPU with AVX512-BF16/AMX, emulated and slow elsewhere.
    monkeypatch.setattr(rt_mod, "cpu_has_bf16", lambda: has_bf16)
    with caplog.at_level("WARNING", logger=rt_mod.__name__):
        assert amp_policy(torch.device("cpu"), "bf16") == (torch.bfloat16, False)
    assert ("emulated" in caplog.text) is not has_bf16


def test_channels_last_setting_per_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert [use_channels_last(s, cpu) for s in ("cuda", "always", "never", True, False)] == [
        False, True, False, False, False]
    assert [use_channels_last(s, cuda) for s in ("cuda", "Always", "never", True, False)] == [
        True, True, False, True, False]
    with pytest.raises(ValueError, match="sometimes"):
        use_channels_last("sometimes", cpu)
    assert rt_mod.init_runtime("cpu", "off", "always").channels_last
    assert not rt_mod.init_runtime("cpu", "off").channels_last  # the default: CUDA only


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "convnextv2_atto"])
def test_channels_last_classifier_computes_the_same_function(backbone: str) -> None:
    # What run.channels_last=always does on the CPU: NHWC model and batches. The forensic channels
    # (FFT, SRM) and both backbone families must give the contiguous layout's logits and gradients.
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone=backbone, img_size=64, drop_path=0.0, head_dropout=0.0,
                                         channels=["rgb", "fft", "srm"])).eval()
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    outputs = []
    for layout in ("never", "always"):
        rt = Runtime(torch.device("cpu"), channels_last=use_channels_last(layout, torch.device("cpu")))
        net = model.to(memory_format=torch.channels_last) if rt.channels_last else model
        x = to_device_float(images, rt)
        assert x.is_contiguous(memory_format=torch.channels_last) is rt.channels_last
        net.zero_grad()
        logits = net(x)
        logits.sum().backward()
        outputs.append((logits.detach(), model.head[1].weight.grad.clone()))
    (plain, plain_grad), (nhwc, nhwc_grad) = outputs
    torch.testing.assert_close(nhwc, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nhwc_grad, plain_grad, rtol=1e-4, atol=1e-4)


class _Faces(Dataset):
    def __init__(self, n: int = 8, size: int = 32):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.targets = (torch.arange(n) % 2).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, _epoch = key  # TrainLoop's sampler asks for (index, epoch), as dataset.FaceDataset takes them
        return self.images[i], self.targets[i], i


def _loop(tmp_path: Path, dtype: torch.dtype | None, scaler: bool) -> TrainLoop:
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone="convnextv2_atto", img_size=32, drop_path=0.0, head_dropout=0.0,
                                         depths=[1, 1, 1, 1]))
    spec = LoopSpec(name="amp", out_dir=tmp_path, epochs=1, batch_size=4, optim=OptimConfig(lr=1e-3, warmup_epochs=0),
                    seed=0, stage_hash="amp", workers=0, ema_decay=0.9, progress=False)

    def loss_fn(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(module(x).float(), y)

    runtime = Runtime(torch.device("cpu"), amp_dtype=dtype, use_scaler=scaler)
    return TrainLoop(spec, runtime, model, _Faces(), loss_fn)


def _params(loop: TrainLoop) -> list[torch.Tensor]:
    return [p.detach().clone() for p in loop.model.parameters()]


@pytest.mark.parametrize(("dtype", "scaler"), [(torch.bfloat16, False), (torch.float16, True), (None, False)])
def test_training_steps_run_in_each_precision(tmp_path: Path, dtype: torch.dtype | None, scaler: bool) -> None:
    loop = _loop(tmp_path, dtype, scaler)
    assert loop.scaler.is_enabled() == scaler
    before = _params(loop)
    images, targets, index = next(iter(loop.loader))
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        assert loop.model(images.float() / 255).dtype == (dtype or torch.float32)  # the forward is in that dtype
    for _ in range(2):
        loop.train_micro_step(images, targets, index, boundary=True)
    assert loop.step == 2 and torch.isfinite(loop.loss_sum)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, _params(loop)))
    assert changed > len(before) // 2  # the optimizer stepped
    if scaler:
        assert loop.scaler.get_scale() == 65536.0  # no overflow: the scale kept


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path: Path) -> None:
    loop = _loop(tmp_path, torch.float16, True)
    loop.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)  # scaled gradients overflow in fp16
    before = _params(loop)
    images, targets, index = next(iter(loop.loader))
    loop.train_micro_step(images, targets, index, boundary=True)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(loop)))  # step skipped: weights untouched
    assert loop.scaler.get_scale() == 2.0**125  # backed off
    assert loop.optimizer.state == {} or all(not s for s in loop.optimizer.state.values())  # no Adam moments
    loop.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # a sane scale: the next step trains
    loop.train_micro_step(images, targets, index, boundary=True)
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(loop)))


def test_compiled_ddp_still_skips_the_all_reduce_of_accumulation_micro_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch.compile on, the training module is a compiled wrapper, not a DistributedDataParallel:
    the engine must still enter DDP's no_sync() for the micro-batches before an accumulation boundary."""
    import functools

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # fast tracing
    entered: list[int] = []
    original = DistributedDataParallel.no_sync

    def spy(self: DistributedDataParallel):  # type: ignore[no-untyped-def]
        entered.append(1)
        return original(self)

    monkeypatch.setattr(DistributedDataParallel, "no_sync", spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_classifier(ModelConfig(backbone="convnextv2_atto", img_size=32, drop_path=0.0,
                                             head_dropout=0.0, depths=[1, 1, 1, 1]))
        spec = LoopSpec(name="ddp", out_dir=tmp_path, epochs=1, batch_size=2,
                        optim=OptimConfig(lr=1e-3, warmup_epochs=0, accum_steps=2), seed=0, stage_hash="ddp",
                        workers=0, compile=True, progress=False)

        def loss_fn(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.binary_cross_entropy_with_logits(module(x).float(), y)

        # world_size 2 in the runtime makes the engine wrap the model in DDP (the group has one process)
        runtime = Runtime(torch.device("cpu"), rank=0, world_size=2)
        loop = TrainLoop(spec, runtime, model, _Faces(), loss_fn)
        assert not isinstance(loop.train_module, DistributedDataParallel) and loop.ddp is not None
        images, targets, index = next(iter(loop.loader))
        for micro in range(4):
            loop.train_micro_step(images, targets, index, boundary=micro % 2 == 1)
        assert len(entered) == 2 and loop.step == 2  # micro-batches 0 and 2 skip the all-reduce
    finally:
        dist.destroy_process_group()
