"""Where the code runs: device, mixed precision policy, torchrun/DDP, seeding."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .config import CHANNELS_LAST_SETTINGS
from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None  # None: fp32
    use_scaler: bool = False  # fp16 needs a GradScaler; bf16 does not
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+GradScaler"}[self.amp_dtype]
        where = f"rank {self.rank}/{self.world_size} " if self.distributed else ""
        return f"{where}{self.device} {amp}{' channels_last' if self.channels_last else ''}"


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def bf16_in_hardware(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 or newer (A100, H100, RTX 30xx and later).

    ``torch.cuda.is_bf16_supported()`` counts emulation and answers yes on a T4 or V100 too, where bf16
    runs slowly in software and fp16 + GradScaler is the fast path.
    """
    return torch.cuda.get_device_capability(device)[0] >= 8


def cpu_has_bf16() -> bool:
    """bf16 instructions in this CPU (AVX512-BF16 or AMX): there bf16 autocast is faster than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def amp_policy(device: torch.device, amp: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, needs GradScaler) for ``run.amp``.

    CUDA, auto: bf16 where the GPU has it in hardware (GRN/LayerNorm can overflow in fp16), else fp16
    with a GradScaler. CPU, auto: fp32. ``bf16`` and ``fp16`` are honoured on the CPU too (torch.amp
    runs both there): the tests run the GPU precision paths that way, and bf16 trains a small ConvNeXt
    1.3x faster than fp32 on a CPU with bf16 instructions (configs/audio.yaml asks for it).
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None, False
    if amp == "bf16" or (amp == "auto" and bf16_in_hardware(device)):
        if device.type == "cpu" and not cpu_has_bf16():
            log.warning("run.amp=bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX): it is emulated "
                        "and slower than fp32 here; set run.amp=off")
        return torch.bfloat16, False
    return torch.float16, True


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    """``run.channels_last`` on this device: cuda (or true) on CUDA only, always, never (or false)."""
    if isinstance(setting, bool):
        setting = str(setting)
    rule = CHANNELS_LAST_SETTINGS.get(setting.lower())
    if rule is None:
        raise ValueError(f"run.channels_last: {setting!r} is not one of cuda, always, never")
    return rule == "always" or (rule == "cuda" and device.type == "cuda")


def init_runtime(device: str = "auto", amp: str = "auto", channels_last: str | bool = "cuda") -> Runtime:
    """Set up the process: torchrun env (RANK/WORLD_SIZE/LOCAL_RANK) -> DDP, device, AMP."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dtype, scaler = amp_policy(dev, amp)
    return Runtime(dev, rank, world, local_rank, dtype, scaler, use_channels_last(channels_last, dev))


def shutdown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def show_progress(enabled: bool) -> bool:
    """Progress bars only on an interactive terminal: in a log file their carriage returns pile up
    (every long loop also logs a line per epoch or a summary)."""
    return enabled and sys.stderr.isatty()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def step_seed(*parts: object) -> Iterator[None]:
    """Reseed the global RNGs from ``parts`` (seed, rank, epoch, step): every step's randomness
    (augmentation, masks, dropout) is then a pure function of where it is, so a resumed run
    repeats exactly what an uninterrupted one would have done."""
    seed_everything(derive_seed(*parts))
    yield
