"""Training-step throughput and peak memory: SSL (SimMIM) and fine-tuning steps, ours vs a baseline.

Both variants run the engine itself: ``engine.TrainLoop`` builds everything (model on the device,
channels_last per the runtime, ``model.param_groups`` -> AdamW, fused on CUDA, GradScaler, EMA for
fine-tuning, optional torch.compile) and every micro-step is ``TrainLoop.train_micro_step``, the
one the training stages run, with the stage's model (``simmim.SimMIM`` / ``model.build_classifier``),
input fit and augmentation (``augment.input_fit``, ``augment.augment_for``) and loss
(``pretrain.masked_image_loss`` / ``finetune.classification_loss``). Input: synthetic uint8 batches
made on the device up front (no disk, no host->device copy).

  ours      runtime.init_runtime: bf16 autocast where supported (else fp16 + GradScaler), channels_last,
            fused AdamW on CUDA; --batch/--accum/--compile as given
  baseline  the original recipe: fp16 autocast + GradScaler, NCHW, batch 8, accumulation 4, eager,
            AdamW (foreach, not fused). On the CPU both run fp32 NCHW (CPU fp16 autocast is not the
            recipe, and the runtime's policy is fp32 on CPU), so there the two differ only in batch x accum.

Timing: no host sync inside the timed loop (one synchronize at the end). Peak memory: CUDA
max_memory_allocated (reset after warm-up); CPU: peak RSS of a forked child process per variant.
MFU (CUDA): model FLOPs of one forward+backward (torch.utils.flop_counter, matmul/conv only)
x images/s / the device's dense bf16 peak.

  python benchmarks/train_speed.py --size 512 --backbone convnextv2_tiny --stage ssl,finetune --steps 20
  python benchmarks/train_speed.py --size 512 --sweep-batch 8,16,32,64 --stage finetune
  python benchmarks/train_speed.py --size 128 --backbone convnextv2_atto --profile --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    bench_config,
    describe_device,
    isolated,
    meta,
    parse_list,
    peak_memory_mb,
    peak_tflops,
    reset_peak,
    sync,
    table,
    write_json,
)

from deepfake_pipeline.augment import augment_for, input_fit  # noqa: E402
from deepfake_pipeline.config import Config  # noqa: E402
from deepfake_pipeline.engine import LoopSpec, TrainLoop, to_device_float  # noqa: E402
from deepfake_pipeline.finetune import classification_loss  # noqa: E402
from deepfake_pipeline.model import build_classifier, param_groups  # noqa: E402
from deepfake_pipeline.pretrain import masked_image_loss  # noqa: E402
from deepfake_pipeline.runtime import Runtime, derive_seed, init_runtime, pick_device, seed_everything  # noqa: E402
from deepfake_pipeline.simmim import SimMIM  # noqa: E402

CARDS_GIB = (24, 80)  # "fits a 24 GB card", "batch for 80 GB"
HEADROOM = 0.9  # share of the card's memory the allocator's peak may use (context, fragmentation)


# ----------------------------------------------------------------------------- stage parts


@dataclasses.dataclass
class StageParts:
    model: nn.Module
    prepare: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    compute_loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    optim: Any  # OptimConfig
    ema_decay: float | None


def build_stage(cfg: Config, stage: str, device: torch.device) -> StageParts:
    """Model, input fit + augmentation and loss as pretrain.run_ssl / finetune.train_fold build them."""
    fit = input_fit(cfg.model)
    if stage == "ssl":
        seed_everything(derive_seed(cfg.run.seed, "init", "ssl"))
        model = SimMIM(cfg.model, mask_patch=cfg.ssl.mask_patch, remask=cfg.ssl.remask)
        augment = augment_for(cfg, cfg.ssl.aug).to(device)
        return StageParts(model, fit.then(augment.prepare), masked_image_loss(model, cfg.ssl.mask_ratio),
                          cfg.ssl.optim, None)
    if stage == "finetune":
        seed_everything(derive_seed(cfg.run.seed, "init", 0))
        augment = augment_for(cfg, cfg.finetune.aug).to(device)
        ema = cfg.finetune.ema_decay if cfg.finetune.ema else None
        return StageParts(build_classifier(cfg.model), fit.then(augment.prepare),
                          classification_loss(cfg.finetune.label_smoothing), cfg.finetune.optim, ema)
    raise ValueError(f"unknown stage {stage!r} (ssl, finetune)")


class _Placeholder(torch.utils.data.Dataset):
    """Sized stand-in for TrainLoop's dataset (sets the schedule length; never read)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        raise RuntimeError("train_speed feeds synthetic device batches; the loader is never iterated")


# ----------------------------------------------------------------------------- the step


def micro_step(loop: TrainLoop, images: Tensor, targets: Tensor, boundary: bool) -> None:
    """One micro-batch through the engine's own ``TrainLoop.train_micro_step`` (its profiler labels
    step::data/augment/forward/backward/optimizer are what ``--profile`` attributes time to)."""
    loop.train_micro_step(images, targets, torch.arange(images.shape[0]), boundary)


def run_steps(loop: TrainLoop, pool: list[tuple[Tensor, Tensor]], n: int) -> None:
    """``n`` optimizer steps of ``loop.accum`` micro-steps each, cycling through the device batches."""
    for _ in range(n):
        for a in range(loop.accum):
            images, targets = pool[loop.micro_done % len(pool)]
            micro_step(loop, images, targets, a == loop.accum - 1)


@dataclasses.dataclass
class Job:
    stage: str
    variant: str  # ours | baseline
    batch: int
    accum: int
    compile: bool
    steps: int
    warmup: int
    count_flops: bool = True
    sync_debug: bool = True
    profile: bool = False
    profile_rows: int = 20
    trace: str | None = None


def _runtime(job: Job, cfg: Config, device: str) -> Runtime:
    rt = init_runtime(device, cfg.run.amp, cfg.run.channels_last)  # also sets TF32 / cudnn.benchmark
    if job.variant == "baseline":
        cuda = rt.device.type == "cuda"
        rt = Runtime(rt.device, amp_dtype=torch.float16 if cuda else None, use_scaler=cuda, channels_last=False)
    return rt


def _precision(rt: Runtime) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+scaler"}[rt.amp_dtype]


def count_flops(loop: TrainLoop, images: Tensor, targets: Tensor) -> float:
    """Model FLOPs per image of one forward + backward (augmentation excluded), eager model."""
    from torch.utils.flop_counter import FlopCounterMode

    n = min(2, images.shape[0])
    rt = loop.rt
    with torch.no_grad():
        x = to_device_float(images[:n], rt)
        if loop.prepare is not None:
            x, _ = loop.prepare(x, targets[:n], torch.arange(n))
    with FlopCounterMode(display=False) as counter:
        with rt.autocast():
            loss = loop.compute_loss(loop.model, x, targets[:n])
        loss.backward()
    loop.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def measure(job: Job, cfg: Config, device: str, peak: float | None, threads: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    rt = _runtime(job, cfg, device)
    dev = rt.device
    parts = build_stage(cfg, job.stage, dev)
    size = cfg.model.img_size
    micro_total = job.accum * (job.warmup + job.steps + 1)
    spec = LoopSpec(
        name=f"bench-{job.stage}", out_dir=Path(tempfile.gettempdir()) / "train_speed_unused", epochs=1,
        batch_size=job.batch, optim=dataclasses.replace(parts.optim, accum_steps=job.accum), seed=cfg.run.seed,
        stage_hash="bench", workers=0, ema_decay=parts.ema_decay, compile=job.compile,
        compile_backend=cfg.run.compile_backend,
        progress=False,
    )
    loop = TrainLoop(spec, rt, parts.model, _Placeholder(job.batch * micro_total), parts.compute_loss,
                     prepare=parts.prepare)
    optimizer = "AdamW fused" if dev.type == "cuda" else "AdamW"
    if job.variant == "baseline":
        opt = spec.optim
        groups = param_groups(loop.model, opt.weight_decay, opt.layer_decay)
        loop.optimizer = torch.optim.AdamW(groups, lr=loop.base_lr, betas=tuple(opt.betas))
        optimizer = "AdamW foreach" if dev.type == "cuda" else "AdamW"
    loop.last_lr = loop.base_lr

    gen = torch.Generator(device=dev).manual_seed(0)
    pool = [
        (torch.randint(0, 256, (job.batch, 3, size, size), dtype=torch.uint8, device=dev, generator=gen),
         torch.randint(0, 2, (job.batch,), device=dev, generator=gen).float())
        for _ in range(min(4, micro_total))
    ]
    result: dict[str, Any] = {
        "stage": job.stage, "variant": job.variant, "batch": job.batch, "accum": job.accum,
        "images_per_step": job.batch * job.accum, "precision": _precision(rt),
        "layout": "channels_last" if rt.channels_last else "NCHW", "compile": job.compile, "optimizer": optimizer,
        "backbone": cfg.model.backbone, "size": size, "channels": "+".join(cfg.model.channels),
    }
    try:
        if job.count_flops:
            result["gflop_per_image"] = count_flops(loop, *pool[0]) / 1e9

        run_steps(loop, pool, job.warmup)
        reset_peak(dev)
        start = time.perf_counter()
        run_steps(loop, pool, job.steps)
        sync(dev)  # the one host sync of the timed region
        seconds = time.perf_counter() - start
        mem, mem_kind = peak_memory_mb(dev)
        images = job.steps * job.batch * job.accum
        result.update(
            seconds=seconds, images_per_s=images / seconds, ms_per_step=1000 * seconds / max(1, job.steps),
            peak_mem_mb=mem, peak_mem_kind=mem_kind, loss=float(loop.loss_sum / max(1, loop.loss_count)),
        )
        if "gflop_per_image" in result:
            tflops = result["gflop_per_image"] * result["images_per_s"] / 1e3
            result["achieved_tflops"] = tflops
            result["peak_tflops"] = peak
            result["mfu"] = tflops / peak if peak else None
        if dev.type == "cuda" and job.sync_debug:
            result["host_syncs"] = count_syncs(functools.partial(run_steps, loop, pool, 1))
        if job.profile:
            result["profile"] = profile_step(loop, functools.partial(run_steps, loop, pool, 1), job)
    except torch.cuda.OutOfMemoryError as exc:
        result.update(oom=True, error=f"CUDA out of memory: {str(exc).splitlines()[0]}")
    finally:
        del loop, parts, pool
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


def count_syncs(step: Callable[[], None]) -> dict[str, Any]:
    """Synchronizing CUDA calls in one optimizer step (torch.cuda.set_sync_debug_mode), by caller line.

    Pageable host->device copies with non_blocking=True block the host too, but are not reported.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    where: dict[str, int] = defaultdict(int)
    for w in caught:
        if "synchroniz" in str(w.message):
            where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return {"count": sum(where.values()), "where": dict(sorted(where.items(), key=lambda kv: -kv[1]))}


# ----------------------------------------------------------------------------- profiling


def _module_category(name: str, module: nn.Module) -> str | None:
    kind = type(module).__name__
    if name.startswith("decoder"):
        return "simmim decoder"
    if kind == "ForensicInput":
        return "forensic rgb norm + cat"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return f"depthwise conv {module.kernel_size[0]}x{module.kernel_size[1]}"
        if module.kernel_size == (1, 1):
            return "pointwise MLP (1x1 conv)"
        return "stem/downsample conv"
    if isinstance(module, nn.Linear):
        return "pointwise MLP (linear)"
    if "LayerNorm" in kind:
        return "LayerNorm"
    if kind == "GlobalResponseNorm":
        return "GRN"
    if kind == "GELU" or isinstance(module, nn.GELU):
        return "GELU"
    return None


@contextlib.contextmanager
def profiling_scopes(loop: TrainLoop) -> Iterator[None]:
    """Label module forwards, the forensic FFT/SRM functions and the EMA update with record_function
    scopes for the profile; all undone on exit (nothing of the package is changed on disk)."""
    import deepfake_pipeline.features as feats

    handles = []
    for name, module in loop.model.named_modules():
        category = _module_category(name, module)
        if category is None:
            continue

        def pre(mod: nn.Module, _args: Any, label: str = f"cat::{category}") -> None:
            mod._bench_rf = torch.profiler.record_function(label)  # type: ignore[attr-defined]
            mod._bench_rf.__enter__()

        def post(mod: nn.Module, _args: Any, _out: Any) -> None:
            mod._bench_rf.__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def scoped(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(label):
                return fn(*args, **kwargs)
        return wrapper

    saved = {n: getattr(feats, n) for n in ("fft_log_amplitude", "standardize", "srm_residuals")}
    feats.fft_log_amplitude = scoped("cat::forensic FFT", saved["fft_log_amplitude"])
    feats.standardize = scoped("cat::forensic FFT", saved["standardize"])
    feats.srm_residuals = scoped("cat::forensic SRM conv", saved["srm_residuals"])
    ema_update = loop.ema.update if loop.ema else None
    if loop.ema is not None:
        loop.ema.update = scoped("step::EMA update", ema_update)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for n, fn in saved.items():
            setattr(feats, n, fn)
        if loop.ema is not None:
            del loop.ema.update  # back to the class method


def categorize(events: list[Any], cuda: bool) -> list[dict[str, Any]]:
    """Self CPU (and CUDA) time per category: forward ops by their innermost module scope, backward
    ops by the forward op they differentiate (autograd sequence numbers), the rest by step scope."""

    def scopes(e: Any) -> tuple[str | None, str | None, Any]:
        cat = step = bwd = None
        p = e
        while p is not None:
            if p.name.startswith("autograd::engine::evaluate_function") and bwd is None:
                bwd = p
            if p.name.startswith("cat::") and cat is None:
                cat = p.name[5:]
            if p.name.startswith("step::"):  # innermost step scope (EMA update sits inside optimizer)
                step = p.name[6:]
                break
            p = p.cpu_parent
        return cat, step, bwd

    # An op records the autograd sequence number current when it starts; only an op that creates a
    # graph node advances it. Ops that need no grad (the forensic channels) share the number of the
    # next node-creating op, so the last forward op with a number (in time order) is its owner.
    seq_cat: dict[int, str | None] = {}
    for e in sorted(events, key=lambda ev: ev.time_range.start):
        if getattr(e, "sequence_nr", -1) >= 0 and not e.name.startswith("autograd::"):
            cat, _, bwd = scopes(e)
            if bwd is None:
                seq_cat[e.sequence_nr] = cat
    cpu: dict[str, float] = defaultdict(float)
    dev: dict[str, float] = defaultdict(float)
    for e in events:
        cat, step, bwd = scopes(e)
        if bwd is not None:
            key = f"backward: {seq_cat.get(bwd.sequence_nr) or 'other (elementwise, residual, loss)'}"
        elif step in ("augment", "data", "optimizer", "EMA update"):
            key = {"augment": "augmentation (kornia)", "data": "uint8 -> float (data)"}.get(step, step)
        elif step == "forward" or cat:
            key = f"forward: {cat or 'other (elementwise, residual, masks, loss)'}"
        elif step == "backward":
            key = "backward: autograd engine (unattributed)"
        else:
            key = f"other ({step or 'unscoped'})"
        cpu[key] += e.self_cpu_time_total
        if cuda:
            dev[key] += getattr(e, "self_device_time_total", 0.0)
    total_cpu = sum(cpu.values()) or 1.0
    total_dev = sum(dev.values()) or 1.0
    rows = [
        {"category": k, "self_cpu_ms": cpu[k] / 1e3, "cpu_share": cpu[k] / total_cpu,
         **({"self_cuda_ms": dev[k] / 1e3, "cuda_share": dev[k] / total_dev} if cuda else {})}
        for k in cpu
    ]
    return sorted(rows, key=lambda r: -(r.get("self_cuda_ms") or r["self_cpu_ms"]))


def profile_step(loop: TrainLoop, one_step: Callable[[], None], job: Job) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    cuda = loop.rt.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    scoped = not job.compile  # module hooks would split the compiled graph
    labels = profiling_scopes(loop) if scoped else contextlib.nullcontext()
    with labels, profile(activities=activities) as prof:
        one_step()
        sync(loop.rt.device)
    if job.trace:
        Path(job.trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(job.trace)
    averages = prof.key_averages()
    out: dict[str, Any] = {
        "top_self_cpu": averages.table(sort_by="self_cpu_time_total", row_limit=job.profile_rows),
        "categories": categorize(list(prof.events()), cuda) if scoped else [],
    }
    if cuda:
        out["top_self_cuda"] = averages.table(sort_by="self_cuda_time_total", row_limit=job.profile_rows)
    return out


# ----------------------------------------------------------------------------- reporting

COLUMNS = [
    ("stage", "stage"), ("variant", "variant"), ("bxa", "batch x accum"), ("precision", "precision"),
    ("layout", "layout"), ("compile", "compile"), ("optimizer", "optimizer"), ("images_per_s", "img/s"),
    ("ms_per_step", "ms/step"), ("peak_mem_mb", "peak MiB"), ("gflop_per_image", "GFLOP/img"),
    ("achieved_tflops", "TFLOP/s"), ("mfu_pct", "MFU %"),
]


def _row(r: dict[str, Any]) -> dict[str, Any]:
    row = dict(r, bxa=f"{r['batch']}x{r['accum']}")
    if r.get("mfu") is not None:
        row["mfu_pct"] = 100 * r["mfu"]
    if r.get("error"):
        row["images_per_s"] = "OOM" if r.get("oom") else "error"
    return row


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one variant -> the first result with median speed and max peak memory."""
    ok = [r for r in results if "images_per_s" in r and not r.get("error")]
    if not ok:
        return results[0]
    out = dict(ok[0])
    for key in ("images_per_s", "ms_per_step", "achieved_tflops", "mfu"):
        values = [r[key] for r in ok if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["peak_mem_mb"] = max(r["peak_mem_mb"] for r in ok)
    out["repeats"] = [r["images_per_s"] for r in ok]
    for key in ("gflop_per_image", "peak_tflops", "profile", "host_syncs"):  # measured in one round only
        found = [r[key] for r in ok if r.get(key) is not None]
        if found:
            out[key] = found[0]
    if out.get("gflop_per_image") and out.get("images_per_s"):  # at the median speed
        out["achieved_tflops"] = out["gflop_per_image"] * out["images_per_s"] / 1e3
        out["mfu"] = out["achieved_tflops"] / out["peak_tflops"] if out.get("peak_tflops") else None
    return out


def print_profile(stage: str, prof: dict[str, Any]) -> None:
    print(f"\nprofile, {stage}, ours: one optimizer step (profiler overhead included)")
    if prof.get("categories"):
        cols = [("category", "category"), ("self_cpu_ms", "self CPU ms"), ("cpu_pct", "CPU %")]
        if "self_cuda_ms" in prof["categories"][0]:
            cols += [("self_cuda_ms", "self CUDA ms"), ("cuda_pct", "CUDA %")]
        rows = [dict(r, cpu_pct=100 * r["cpu_share"], cuda_pct=100 * r.get("cuda_share", 0.0))
                for r in prof["categories"]]
        print(table(rows, cols))
    print("\ntop ops by self CPU time:")
    print(prof["top_self_cpu"])
    if prof.get("top_self_cuda"):
        print("top ops by self CUDA time:")
        print(prof["top_self_cuda"])


def fit_batches(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Linear fit peak MiB = a + b * batch and the largest batch under HEADROOM x each card."""
    ok = [(p["batch"], p["peak_mem_mb"]) for p in points if p.get("peak_mem_mb") and not p.get("error")]
    if len(ok) < 2:
        return {}
    n = len(ok)
    mx = sum(b for b, _ in ok) / n
    my = sum(m for _, m in ok) / n
    var = sum((b - mx) ** 2 for b, _ in ok)
    slope = sum((b - mx) * (m - my) for b, m in ok) / var if var else 0.0
    intercept = my - slope * mx
    fits = {}
    for gib in CARDS_GIB:
        budget = HEADROOM * gib * 1024
        fits[f"max_batch_{gib}gb"] = int(math.floor((budget - intercept) / slope)) if slope > 0 else None
    return {"mib_per_image": slope, "fixed_mib": intercept, **fits}


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="pipeline YAML (default: the built-in schema defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--stage", default="ssl,finetune", help="ssl, finetune or both (comma-separated)")
    p.add_argument("--size", type=int, default=None, help="model.img_size (default: config, 512)")
    p.add_argument("--backbone", default=None, help="model.backbone (default: config, convnextv2_tiny)")
    p.add_argument("--channels", default=None, help="model.channels, e.g. rgb,fft,srm")
    p.add_argument("--batch", type=int, default=None, help="ours: micro-batch (default: the stage's batch_size)")
    p.add_argument("--accum", type=int, default=None, help="ours: accumulation steps (default: the stage's)")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile (as run.compile)")
    p.add_argument("--compile-backend", default=None, help="run.compile_backend (default inductor; eager: tracing only)")
    p.add_argument("--amp", default=None, help="ours: run.amp (auto, bf16, fp16, off)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first (compile, autotune)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; use 1 on a shared, busy machine)")
    p.add_argument("--baseline-batch", type=int, default=8)
    p.add_argument("--baseline-accum", type=int, default=4)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="rounds per variant, alternating A B B A; median reported")
    p.add_argument("--sweep-batch", default=None, help="e.g. 8,16,32,64: ours' peak memory against batch size")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (else a device table)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra forward+backward)")
    p.add_argument("--profile", action="store_true", help="profile one optimizer step of ours per stage")
    p.add_argument("--profile-rows", type=int, default=20)
    p.add_argument("--trace", default=None, help="chrome trace path prefix for --profile")
    p.add_argument("--isolate", choices=("auto", "fork", "none"), default="auto",
                   help="auto: a forked child per measurement on the CPU (own peak RSS), in-process on CUDA")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = f"[{args.channels}]" if args.channels else None
    cfg = bench_config(args.config, args.set, **{
        "model.img_size": args.size, "model.backbone": args.backbone, "model.channels": channels,
        "run.amp": args.amp, "run.compile_backend": args.compile_backend,
    })
    device = pick_device(args.device)
    fork = args.isolate == "fork" or (args.isolate == "auto" and device.type == "cpu")
    if fork and device.type == "cuda":
        raise SystemExit("--isolate fork is for the CPU only (CUDA cannot be forked)")
    peak = peak_tflops(device, args.peak_tflops)
    stages = parse_list(args.stage)
    print(f"train_speed: {cfg.model.backbone} {cfg.model.img_size} px, channels {'+'.join(cfg.model.channels)}, "
          f"{describe_device(device)}")
    payload: dict[str, Any] = {"meta": meta(device), "results": [], "sweep": {}}

    def job(stage: str, variant: str, **kw: Any) -> Job:
        own = getattr(cfg, stage)
        if variant == "baseline":
            batch, accum, comp = args.baseline_batch, args.baseline_accum, False
        else:
            batch = args.batch or own.batch_size
            accum = args.accum or own.optim.accum_steps
            comp = args.compile
        kw.setdefault("count_flops", not args.no_flops)
        return Job(stage, variant, batch, max(1, accum), comp, args.steps, args.warmup,
                   profile_rows=args.profile_rows, **kw)

    def report_error(r: dict[str, Any]) -> None:
        if r.get("error") and not r.get("oom"):
            print(f"  {r['stage']} {r['variant']}: {r['error']}\n{r.get('traceback', '')}", file=sys.stderr)

    failed = False
    if args.sweep_batch:
        for stage in stages:
            points = []
            for b in parse_list(args.sweep_batch, int):
                j = dataclasses.replace(job(stage, "ours"), batch=b, accum=1, count_flops=False, sync_debug=False)
                r = isolated(measure, j, cfg, args.device, peak, args.threads, fork=fork)
                report_error(r)
                failed |= bool(r.get("error")) and not r.get("oom")
                points.append(r)
            fit = fit_batches(points)
            payload["sweep"][stage] = {"points": points, "fit": fit}
            print(f"\nbatch sweep, {stage} (ours, accum 1): peak memory = {points[0].get('peak_mem_kind', '')}")
            rows = []
            for r in points:
                mem = r.get("peak_mem_mb")
                row = {"batch": r["batch"], "images_per_s": "OOM" if r.get("oom") else r.get("images_per_s"),
                       "peak_mem_mb": mem, "peak_gib": mem / 1024 if mem else None}
                if device.type == "cuda":
                    for gib in CARDS_GIB:
                        row[f"fits{gib}"] = ("no" if r.get("oom") or mem is None
                                             else "yes" if mem <= HEADROOM * gib * 1024 else "no")
                rows.append(row)
            cols = [("batch", "batch"), ("images_per_s", "img/s"), ("peak_mem_mb", "peak MiB"), ("peak_gib", "GiB")]
            if device.type == "cuda":
                cols += [(f"fits{g}", f"fits {g} GB (<= {HEADROOM:.0%})") for g in CARDS_GIB]
            print(table(rows, cols))
            if fit and device.type == "cuda":
                print(f"linear fit: {fit['fixed_mib']:.0f} MiB + {fit['mib_per_image']:.1f} MiB/image -> "
                      + ", ".join(f"largest batch for {g} GB: {fit[f'max_batch_{g}gb']}" for g in CARDS_GIB))
            elif fit:
                print(f"linear fit (host RSS, not GPU memory): {fit['fixed_mib']:.0f} MiB + "
                      f"{fit['mib_per_image']:.1f} MiB/image")
    else:
        rows = []
        for stage in stages:
            variants = ["ours"] if args.no_baseline else ["baseline", "ours"]
            runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for rnd in range(max(1, args.repeats)):
                order = variants if rnd % 2 == 0 else variants[::-1]
                for v in order:
                    last = rnd == max(1, args.repeats) - 1
                    trace = f"{args.trace}.{stage}.json" if args.trace else None
                    j = job(stage, v, profile=args.profile and v == "ours" and last, trace=trace,
                            count_flops=not args.no_flops and rnd == 0)
                    r = isolated(measure, j, cfg, args.device, peak, args.threads, fork=fork)
                    report_error(r)
                    failed |= bool(r.get("error"))
                    runs[v].append(r)
            merged = {v: _median(rs) for v, rs in runs.items()}
            for v in variants:
                payload["results"].append(merged[v])
                rows.append(_row(merged[v]))
            base, ours = merged.get("baseline"), merged["ours"]
            if base and base.get("images_per_s") and ours.get("images_per_s"):
                ratio = {"stage": stage, "variant": "ours/base",
                         "images_per_s": ours["images_per_s"] / base["images_per_s"],
                         "peak_mem_mb": ours["peak_mem_mb"] / base["peak_mem_mb"], "batch": "", "accum": ""}
                ratio["bxa"] = "ratio"
                rows.append(ratio)
                payload["results"].append({"stage": stage, "ratio_images_per_s": ratio["images_per_s"],
                                           "ratio_peak_mem": ratio["peak_mem_mb"]})
        print(table(rows, COLUMNS))
        r0 = payload["results"][0] if payload["results"] else {}
        print(f"peak memory = {r0.get('peak_mem_kind', '-')}; ms/step = one optimizer step (batch x accum images)")
        if device.type == "cpu":
            print("CPU: both variants run fp32 NCHW (autocast fp16 on the CPU is not the recipe); absolute CPU "
                  "times say nothing about GPU speed.")
        elif peak is None:
            print("MFU: unknown device peak; pass --peak-tflops")
        for r in payload["results"]:
            if r.get("host_syncs"):
                s = r["host_syncs"]
                print(f"host syncs per optimizer step, {r['stage']} {r['variant']}: {s['count']} "
                      f"({', '.join(f'{k} x{v}' for k, v in list(s['where'].items())[:6])})")
        for r in payload["results"]:
            if r.get("profile"):
                print_profile(r["stage"], r["profile"])
    write_json(args.json, payload)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
