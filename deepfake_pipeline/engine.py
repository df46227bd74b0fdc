"""The training engine shared by the SSL and fine-tuning stages.

One loop, ``TrainLoop.run``: AdamW with warmup + cosine, gradient accumulation and clipping,
bf16/fp16 autocast (GradScaler for fp16), channels_last (as ``run.channels_last`` says), optional
``torch.compile`` on CUDA, DDP under torchrun, an EMA of the weights, ``metrics.jsonl`` per epoch,
and ``last.pt`` checkpoints from which a killed run resumes to the same final weights.

Why resuming is exact: every micro-batch reseeds the global RNGs from (seed, rank, epoch, index)
(augmentation, masks, dropout), the epoch's sample order comes from DistributedSampler's
(seed, epoch) permutation, and a checkpoint records how many micro-batches of the epoch are done
together with the partial epoch statistics. Checkpoints are taken only at optimizer-step
boundaries, so no half-accumulated gradient is ever lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from .augment import InputFit
from .checkpoint import check_resumable, load_state, save_state
from .config import OptimConfig
from .faults import failpoint
from .images import atomic_write_text, remove_stale_temps
from .model import param_groups
from .runtime import Runtime, derive_seed, show_progress, step_seed

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- schedule, EMA


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup from 0 to ``base_lr``, then cosine decay to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class ModelEma(nn.Module):
    """Exponential moving average of a model's parameters and buffers.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so short runs are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._source: nn.Module | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        if self._pairs is None or self._source is not model:
            # Floating-point parameters and buffers, matched by name; built once, not per step.
            ema_state, model_state = self.module.state_dict(), model.state_dict()
            names = [k for k, v in model_state.items() if v.dtype.is_floating_point]
            self._pairs = ([ema_state[k] for k in names], [model_state[k] for k in names])
            self._source = model
        torch._foreach_lerp_(self._pairs[0], self._pairs[1], 1.0 - decay)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._pairs = None  # tensors may be replaced: rebuild the pairs on the next update
        return super().load_state_dict(state, strict=strict, assign=assign)


# ----------------------------------------------------------------------------- data


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of one rank's share of an epoch, starting after ``skip`` already-done batches.

    Wraps DistributedSampler (the (seed, epoch) permutation, split over ranks); the loop sets
    ``epoch`` and ``skip`` before iterating, in the main process, so persistent workers see it.
    Each key is ``(index, epoch)``: loader-side augmentation (``dataset.JpegReencode``) draws from it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, runtime: Runtime, seed: int, shuffle: bool = True,
                 groups: Sequence[str] | None = None):
        self.sampler = DistributedSampler(
            dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.batch_size = batch_size
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and len(self.groups) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"groups: {len(self.groups)} labels for {len(dataset)} items")  # type: ignore[arg-type]
        self.seed, self.rank, self.world = seed, runtime.rank, runtime.world_size
        # Full batches only (constant step size), unless the data is smaller than one batch; with groups
        # the same count on every rank (DDP steps together).
        per_rank = len(self.sampler) // batch_size if groups is None else len(dataset) // batch_size // self.world  # type: ignore[arg-type]
        self.num_batches = max(1, per_rank)
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches - self.skip

    def rank_order(self) -> list[int]:
        """This rank's items of the epoch, in order: the sampler's permutation, or with ``groups`` the
        grouped order with whole batches dealt out to the ranks in turn (a batch is never split)."""
        if self.groups is None:
            return list(self.sampler)
        order = grouped_order(self.groups, derive_seed(self.seed, "groups", self.epoch))
        size = self.batch_size
        batches = [order[b * size : (b + 1) * size] for b in range(len(order) // size)] or [order]
        if len(batches) < self.world:  # fewer batches than ranks: repeat them (DistributedSampler pads too)
            batches = (batches * self.world)[: self.world]
        return [i for b in batches[self.rank :: self.world] for i in b]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.rank_order()
        for b in range(self.skip, self.num_batches):
            yield [(i, self.epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


def grouped_order(groups: np.ndarray, seed: int) -> list[int]:
    """Every index once, each group's members next to each other (so they share a batch unless a batch
    ends between them): the groups in a seeded random order, their members shuffled within."""
    rng = np.random.default_rng(seed)
    labels, members = np.unique(groups, return_inverse=True)
    by_group: list[list[int]] = [[] for _ in labels]
    for i in rng.permutation(len(groups)):
        by_group[members[i]].append(int(i))
    return [i for g in rng.permutation(len(labels)) for i in by_group[g]]


def make_loader(
    dataset: Dataset, batch_sampler: Sampler | None, runtime: Runtime, workers: int, seed: int,
    batch_size: int | None = None,
) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=batch_sampler is not None, prefetch_factor=4)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        batch_size=batch_size if batch_sampler is None else 1,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        # Worker seeds come from this generator, not the global RNG the steps reseed.
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def to_device_float(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """uint8 Bx3xHxW (host) -> float [0,1] on the device."""
    x = images.to(runtime.device, non_blocking=True)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.float().div_(255.0)


# ----------------------------------------------------------------------------- the loop


@dataclass
class LoopSpec:
    """What one training run (the SSL stage, or one fold) needs to know."""

    name: str  # "ssl", "fold0", ...
    out_dir: Path
    epochs: int
    batch_size: int
    optim: OptimConfig
    seed: int
    stage_hash: str
    workers: int = 2
    save_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)
    ema_decay: float | None = None
    compile: bool = False
    compile_backend: str = "inductor"
    progress: bool = True
    select_metric: str | None = None  # e.g. "val_auc"; None: no best-epoch tracking
    groups: Sequence[str] | None = None  # per dataset item: keep each group's items together (grouped_order)
    extra_state: dict[str, Any] = field(default_factory=dict)


Prepare = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ComputeLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Evaluate = Callable[[nn.Module, int], dict[str, float]]
OnBest = Callable[[nn.Module, int, dict[str, float]], None]


# Smaller changes are rounding, not progress: a perfect AUC comes out as 1.0 or 0.9999999999999999 by
# the order of the trapezoid sum, and a later perfect epoch must not displace the first one.
METRIC_TIE = 1e-9


def metric_is_better(name: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of metric ``name`` beats ``best`` by more than ``METRIC_TIE``: ties keep the
    earlier epoch (where validation saturates, later epochs fit the training fakes further)."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if math.isnan(value):
        return False
    return value < best - METRIC_TIE if name.endswith("loss") else value > best + METRIC_TIE


class TrainLoop:
    """Runs ``spec.epochs`` epochs of ``compute_loss`` over ``dataset``, resumable from last.pt.

    ``prepare(x, y, index)`` turns a float [0,1] device batch of aligned faces, its targets and the
    dataset indices into the model input and targets (the input fit, augmentation; Self-Blended
    Images also turn some real faces into fakes); it runs under ``no_grad`` and the step's seed. ``evaluate`` (rank 0) returns validation metrics per
    epoch; ``on_best`` is called when ``spec.select_metric`` improves, with the model evaluated
    (the EMA when there is one).
    """

    def __init__(
        self,
        spec: LoopSpec,
        runtime: Runtime,
        model: nn.Module,
        dataset: Dataset,
        compute_loss: ComputeLoss,
        prepare: Prepare | None = None,
        evaluate: Evaluate | None = None,
        on_best: OnBest | None = None,
    ):
        self.spec = spec
        self.rt = runtime
        self.compute_loss = compute_loss
        self.prepare = prepare
        self.evaluate = evaluate
        self.on_best = on_best
        self.ckpt_path = spec.out_dir / "last.pt"
        self.metrics_path = spec.out_dir / "metrics.jsonl"

        self.model = model.to(runtime.device)
        if runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEma(self.model, spec.ema_decay) if spec.ema_decay else None

        opt = spec.optim
        self.accum = max(1, opt.accum_steps)
        self.batches = EpochBatches(dataset, spec.batch_size, runtime, spec.seed, groups=spec.groups)
        self.loader = make_loader(dataset, self.batches, runtime, spec.workers, derive_seed(spec.seed, "loader"))
        micro = self.batches.num_batches
        self.steps_per_epoch = math.ceil(micro / self.accum)
        self.total_steps = self.steps_per_epoch * spec.epochs
        self.warmup_steps = int(round(opt.warmup_epochs * self.steps_per_epoch))
        effective_batch = spec.batch_size * self.accum * runtime.world_size
        self.base_lr = opt.lr * effective_batch / 256.0
        groups = param_groups(self.model, opt.weight_decay, opt.layer_decay, backbone_lr_scale=opt.backbone_lr_scale)
        fused = runtime.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, betas=tuple(opt.betas), fused=fused)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.use_scaler)

        # train_module runs the forward pass: the model, in DDP, compiled. The DDP wrapper is kept
        # apart: a compiled module is no DistributedDataParallel instance, and its no_sync() is the
        # one that skips the all-reduce of accumulation micro-batches.
        self.train_module: nn.Module = self.model
        self.ddp: DistributedDataParallel | None = None
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.train_module = self.ddp
        if spec.compile:
            self.train_module = torch.compile(self.train_module, backend=spec.compile_backend)

        # Position and statistics (all restored on resume).
        self.epoch = 0
        self.micro_done = 0  # micro-batches of the current epoch already trained
        self.step = 0  # optimizer steps so far
        self.loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
        self.loss_count = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    # -- checkpointing -------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "stage_hash": self.spec.stage_hash,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"step": self.step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps},
            "epoch": self.epoch,
            "micro_done": self.micro_done,
            "loss_sum": self.loss_sum.detach().cpu(),
            "loss_count": self.loss_count,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "rng_cpu": torch.get_rng_state(),
            "extra": self.spec.extra_state,
        }

    def save(self) -> None:
        if self.rt.is_main:
            save_state(self.ckpt_path, self._state())
        self.rt.barrier()

    def try_resume(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        state = load_state(self.ckpt_path)
        check_resumable(state, self.spec.stage_hash, self.ckpt_path)
        self.model.load_state_dict(state["model"])
        if self.ema and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["schedule"]["step"])
        self.epoch = int(state["epoch"])
        self.micro_done = int(state["micro_done"])
        self.loss_sum = state["loss_sum"].to(self.rt.device)
        self.loss_count = int(state["loss_count"])
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        torch.set_rng_state(state["rng_cpu"])
        self._trim_metrics()
        log.info("%s: resumed from %s at epoch %d, batch %d (step %d)", self.spec.name, self.ckpt_path,
                 self.epoch, self.micro_done, self.step)
        return True

    def _trim_metrics(self) -> None:
        """Drop metric lines of epochs the checkpoint has not finished (and a torn last line)."""
        if not (self.rt.is_main and self.metrics_path.is_file()):
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("epoch", -1) < self.epoch:
                kept.append(line)
        atomic_write_text(self.metrics_path, "".join(x + "\n" for x in kept))

    def _append_metrics(self, record: dict[str, Any]) -> None:
        if self.rt.is_main:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()

    # -- training --------------------------------------------------------------------------------

    def _set_lr(self) -> float:
        lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.base_lr, self.spec.optim.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _optimizer_step(self) -> None:
        lr = self._set_lr()
        clip = self.spec.optim.clip_grad
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model, self.step)
        self.step += 1
        self.last_lr = lr

    def train_micro_step(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor,
                         boundary: bool) -> int:
        """One micro-batch of the current epoch: reseed from (seed, rank, epoch, index), uint8 -> float on
        the device, ``prepare`` under no_grad, autocast forward + loss, scaled backward of loss / accum
        (no all-reduce before an accumulation ``boundary``), the loss summed on the device, and the
        optimizer step at the boundary. Returns the number of images trained on."""
        spec, rt = self.spec, self.rt
        step = torch.profiler.record_function  # labels for benchmarks/train_speed.py --profile; ~free otherwise
        with step_seed(spec.seed, rt.rank, self.epoch, self.micro_done):
            with torch.no_grad():
                with step("step::data"):
                    x = to_device_float(images, rt)
                    y = targets.to(rt.device, non_blocking=True)
                if self.prepare is not None:
                    with step("step::augment"):
                        x, y = self.prepare(x, y, indices)
            skip_sync = self.ddp is not None and not boundary
            with self.ddp.no_sync() if skip_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                with step("step::forward"), rt.autocast():
                    loss = self.compute_loss(self.train_module, x, y)
                with step("step::backward"):
                    self.scaler.scale(loss / self.accum).backward()
        self.loss_sum += loss.detach().double()
        self.loss_count += 1
        self.micro_done += 1
        if boundary:
            with step("step::optimizer"):
                self._optimizer_step()
        return int(x.shape[0])

    def run(self, resume: bool = True) -> dict[str, Any]:
        spec, rt = self.spec, self.rt
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        if rt.is_main:
            remove_stale_temps(spec.out_dir)  # left by a kill during a checkpoint write
        if not (resume and self.try_resume()) and rt.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh start: no metrics from an older attempt
        self.last_lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.base_lr, spec.optim.min_lr)
        started = time.time()
        n_micro = self.batches.num_batches
        while self.epoch < spec.epochs:
            epoch_start = time.time()
            images_seen = 0
            self.batches.set_position(self.epoch, self.micro_done)
            self.model.train()
            bar = tqdm(
                total=n_micro, initial=self.micro_done, desc=f"{spec.name} epoch {self.epoch + 1}/{spec.epochs}",
                disable=not (show_progress(spec.progress) and rt.is_main), leave=False, dynamic_ncols=True,
            )
            for images, targets, indices in self.loader:
                boundary = (self.micro_done + 1) % self.accum == 0 or self.micro_done + 1 == n_micro
                images_seen += self.train_micro_step(images, targets, indices, boundary)
                if boundary:
                    failpoint("step")
                    if spec.save_every and self.step % spec.save_every == 0 and self.micro_done < n_micro:
                        self.save()
                bar.update(1)
                if not bar.disable and self.micro_done % 25 == 0:  # a host sync: only where it is shown
                    bar.set_postfix(loss=f"{(self.loss_sum / max(1, self.loss_count)).item():.4f}")
            bar.close()
            record = self._finish_epoch(images_seen, time.time() - epoch_start)
            log.info("%s epoch %d/%d: %s", spec.name, record["epoch"] + 1, spec.epochs, _fmt(record))
            failpoint("epoch_end")
            self.save()
        summary = {
            "epochs": spec.epochs, "steps": self.step, "seconds": round(time.time() - started, 1),
            "best_epoch": self.best_epoch, "best_value": self.best_value,
        }
        return summary

    def _finish_epoch(self, images_seen: int, seconds: float) -> dict[str, Any]:
        spec, rt = self.spec, self.rt
        loss = self.loss_sum.clone()
        count = torch.tensor(float(self.loss_count), device=rt.device, dtype=torch.float64)
        if rt.distributed:
            torch.distributed.all_reduce(loss)
            torch.distributed.all_reduce(count)
        record: dict[str, Any] = {
            "stage": spec.name, "epoch": self.epoch, "step": self.step,
            "lr": self.last_lr, "train_loss": float(loss / count.clamp_min(1)),
            "images_per_s": round(images_seen * rt.world_size / max(seconds, 1e-9), 2),
            "seconds": round(seconds, 2),
        }
        if rt.device.type == "cuda":
            record["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(rt.device) / 2**30, 2)
        if self.evaluate is not None and rt.is_main:
            eval_model = self.ema.module if self.ema else self.model
            eval_model.eval()
            metrics = self.evaluate(eval_model, self.epoch)
            record.update(metrics)
            if spec.select_metric:
                value = metrics[spec.select_metric]
                if metric_is_better(spec.select_metric, value, self.best_value):
                    self.best_value, self.best_epoch = value, self.epoch
                    if self.on_best is not None:
                        self.on_best(eval_model, self.epoch, metrics)
                record["best_epoch"] = self.best_epoch
        self._append_metrics(record)
        self.epoch += 1
        self.micro_done = 0
        self.loss_sum.zero_()
        self.loss_count = 0
        return record


def _fmt(record: dict[str, Any]) -> str:
    keys = [k for k in record if k not in ("stage", "epoch", "step")]
    return " ".join(f"{k}={record[k]:.4g}" if isinstance(record[k], float) else f"{k}={record[k]}" for k in keys)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    fit: InputFit,
    views: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    progress: bool = False,
    desc: str = "predict",
) -> torch.Tensor:
    """Mean logit over ``views`` (TTA) for every item of ``loader``, in loader order (CPU, float32)."""
    model.eval()
    out = []
    for images, _, _ in tqdm(loader, desc=desc, disable=not show_progress(progress), leave=False, dynamic_ncols=True):
        # stays on the device: one copy at the end, no per-batch sync
        out.append(batch_logits(model, images, runtime, fit, views))
    return torch.cat(out).cpu() if out else torch.zeros(0)


@torch.no_grad()
def batch_logits(
    model: nn.Module,
    images: torch.Tensor,
    runtime: Runtime,
    fit: InputFit,
    views: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Mean logit over ``views`` (TTA; identity when None) of one uint8 batch of aligned faces, each
    view then fitted to the network input (``fit.eval``); on the device, float32."""
    x = to_device_float(images, runtime)
    views = views or [lambda t: t]
    total = None
    for view in views:
        with runtime.autocast():
            logits = model(fit.eval(view(x))).float()
        total = logits if total is None else total + logits
    return total / len(views)
