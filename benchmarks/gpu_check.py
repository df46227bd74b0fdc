"""The GPU check's steps (``benchmarks/gpu_check.sh`` runs this): each one a harness or CLI of the
project in a subprocess with its own time limit, all results in one JSON and one markdown summary.

Steps, most important first (a step that fails or times out is recorded, the next one runs):

  env        torch/CUDA versions, the GPU, its compute capability and the AMP policy it gets
  train      train_speed.py: SSL and fine-tuning step, ours (bf16, channels_last, fused AdamW) against
             the original recipe (fp16 + GradScaler, NCHW, batch 8 x 4), images/s, MFU, peak memory
  e2e        configs/default.yaml end to end on synthetic 512 px faces: align (MTCNN on the GPU), SSL
             1 epoch, one fold of 1 epoch, predict (safe_inference.py, 4 TTA views); seconds per stage
  predict    predict_speed.py: 5 folds x 4 TTA views, images/s
  decode     input_pipeline.py: nvjpeg on the GPU against libjpeg-turbo in loader workers
  memory     train_speed.py --sweep-batch: peak memory against batch size, largest batch per card
  compile    train_speed.py --compile: the fine-tuning step compiled, against eager (the train step)

``--dry-run`` runs the same steps on the CPU at tiny sizes (convnextv2_atto, 64 px, one step each):
the test suite runs it, so the first GPU cannot fail for a reason a CPU would have shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 460  # the whole check; the device tool allows 10 minutes a command, and a rerun must fit


@dataclass
class Sizes:
    """What each step measures at: the recipe on a GPU, tiny on the CPU (dry run)."""

    device: str
    backbone: str
    size: int
    steps: int
    warmup: int
    faces: int
    predict_images: int
    decode_images: int
    sweep: str
    decode_batch: int
    compile_backend: str  # dry run: eager (dynamo traces the model; no C++ build of minutes on a CPU)
    threads: list[str] = field(default_factory=list)

    @classmethod
    def for_run(cls, dry: bool) -> Sizes:
        if dry:
            return cls("cpu", "convnextv2_atto", 64, 1, 1, 16, 16, 48, "2,4", 8, "eager", ["--threads", "1"])
        return cls("cuda", "convnextv2_tiny", 512, 10, 3, 64, 512, 256, "16,32,64,128", 32, "inductor")


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_step(name: str, cmd: list[str], limit_s: float, log: list[str], env: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """Run ``cmd`` (cwd: the repository) within ``limit_s``; its status, seconds and output tail."""
    start = time.perf_counter()
    print(f"[gpu_check] {name}: {' '.join(cmd)} (limit {limit_s:.0f} s)", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, limit_s),
                              env={**os.environ, **(env or {})})
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timeout after {limit_s:.0f} s"
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace") \
            if isinstance(exc.stdout, bytes) else str(exc.stdout or "") + str(exc.stderr or "")
    seconds = time.perf_counter() - start
    log.append(f"## {name} ({status}, {seconds:.1f} s)\n$ {' '.join(cmd)}\n{out[-6000:]}\n")
    print(f"[gpu_check] {name}: {status} in {seconds:.1f} s", flush=True)
    return {"status": status, "seconds": round(seconds, 1), "tail": out[-1500:]}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def env_facts(dry: bool) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO))
    from deepfake_pipeline.runtime import amp_policy, bf16_in_hardware

    facts: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                             "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                             "dry_run": dry}
    if torch.cuda.is_available():
        dev = torch.device("cuda:0")
        dtype, scaler = amp_policy(dev, "auto")
        facts.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                     memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                     bf16_in_hardware=bf16_in_hardware(dev), amp_auto=f"{dtype} scaler={scaler}")
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            facts["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                                 timeout=20).stdout.strip()
    return facts


def end_to_end(sizes: Sizes, work: Path, limit_s: float, log: list[str]) -> dict[str, Any]:
    """configs/default.yaml on synthetic faces: align, SSL 1 epoch, fold 0 for 1 epoch, safe_inference."""
    data, run = work / "e2e_data", work / "e2e_run"
    sets = [f"data.root={data}", f"align.out={work / 'e2e_faces'}", f"run.dir={run}", "run.name=gpu_check",
            "ssl.epochs=1", "finetune.epochs=1", "finetune.run_folds=[0]", "run.progress=false",
            "model.pretrained=false"]  # the recipe starts from timm's hub weights: the GPU machine has no network
    if sizes.device == "cpu":
        sets += [f"model.backbone={sizes.backbone}", f"model.img_size={sizes.size}", f"align.size={sizes.size}",
                 "run.device=cpu", "align.device=cpu", "run.workers=0", "align.workers=0"]
    args = ["--config", "configs/default.yaml"] + [a for s in sets for a in ("--set", s)]
    deadline = time.perf_counter() + limit_s
    stages: dict[str, Any] = {}
    steps = [
        ("data", _python("-m", "deepfake_pipeline.demo_data", "--out", str(data), "--n", str(sizes.faces),
                         "--size", str(max(sizes.size, 256)), "--seed", "0")),
        ("align", _python("align_faces.py", *args)),
        ("ssl", _python("train.py", *args, "--stage", "ssl")),
        ("finetune fold 0", _python("train.py", *args, "--stage", "finetune")),
        ("predict (safe_inference, 4 TTA views)", _python("safe_inference.py", "--run", str(run), "--out",
                                                          str(work / "e2e_submission.csv"))),
    ]
    for name, cmd in steps:
        result = run_step(f"e2e {name}", cmd, deadline - time.perf_counter(), log)
        stages[name] = {k: result[k] for k in ("status", "seconds")}
        if result["status"] != "ok":
            break
    ok = all(s["status"] == "ok" for s in stages.values()) and len(stages) == len(steps)
    return {"status": "ok" if ok else "failed", "stages": stages,
            "seconds": round(sum(s["seconds"] for s in stages.values()), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script, not the GPU")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for every step together")
    p.add_argument("--only", default=None, help="comma-separated steps (default: all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Scratch outside $OUT: the device tool brings back a few files from $OUT, not a run folder.
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sizes = Sizes.for_run(args.dry_run)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
            return 2
    started = time.perf_counter()
    log: list[str] = []
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": vars(sizes)}
    results["env"] = env_facts(args.dry_run)
    common = ["--backbone", sizes.backbone, "--size", str(sizes.size), "--device", sizes.device, *sizes.threads]

    def remaining(cap: float) -> float:
        return min(cap, args.budget - (time.perf_counter() - started))

    def harness(name: str, cmd: list[str], cap: float) -> None:
        path = work / f"{name}.json"
        result = run_step(name, [*cmd, "--json", str(path)], remaining(cap), log)
        result["json"] = _read_json(path)
        results[name] = result

    plan = {
        "train": lambda: harness("train", _python("benchmarks/train_speed.py", *common, "--stage", "ssl,finetune",
                                                  "--steps", str(sizes.steps), "--warmup", str(sizes.warmup)), 100),
        "e2e": lambda: results.__setitem__("e2e", end_to_end(sizes, work, remaining(150), log)),
        "predict": lambda: harness("predict", _python("benchmarks/predict_speed.py", *common, "--folds", "5",
                                                      "--images", str(sizes.predict_images)), 50),
        "decode": lambda: harness("decode", _python(
            "benchmarks/input_pipeline.py", "--make", str(sizes.decode_images), "--size", str(sizes.size),
            "--workers", "0,4" if sizes.device == "cuda" else "0", "--methods", "torchvision,nvjpeg,no-decode",
            "--batch", str(sizes.decode_batch), "--aug", "none", "--dir", str(work / "jpegs"), "--device",
            sizes.device, *sizes.threads), 50),
        "memory": lambda: harness("memory", _python("benchmarks/train_speed.py", *common, "--stage", "finetune",
                                                    "--no-baseline", "--no-flops", "--sweep-batch", sizes.sweep,
                                                    "--steps", "2", "--warmup", "1"), 70),
        "compile": lambda: harness("compile", _python("benchmarks/train_speed.py", *common, "--stage", "finetune",
                                                      "--no-baseline", "--compile", "--compile-backend",
                                                      sizes.compile_backend, "--steps", str(sizes.steps),
                                                      "--warmup", str(sizes.warmup)), 150),
    }
    wanted = args.only.split(",") if args.only else list(plan)
    for name in wanted:
        if remaining(1e9) < 5:
            results[name] = {"status": "skipped: the time budget is spent"}
            continue
        plan[name]()
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "summary.md").write_text(summary(results))
    (out / "steps.log").write_text("\n".join(log))
    shutil.rmtree(work, ignore_errors=True)
    failed = [k for k in wanted if results.get(k, {}).get("status") not in ("ok",)]
    print(f"[gpu_check] done in {results['seconds']} s; failed: {', '.join(failed) or 'none'} -> {out}", flush=True)
    return 0 if not failed else 1


def summary(results: dict[str, Any]) -> str:
    """The figures as markdown (what goes into benchmarks/RESULTS.md)."""
    env = results["env"]
    lines = [f"# gpu_check {results['date']}", "",
             f"- device: {env.get('gpu', 'CPU (dry run)')}, capability {env.get('capability')}, "
             f"{env.get('memory_gib', '-')} GiB; torch {env['torch']}, CUDA {env['cuda']}; AMP auto: "
             f"{env.get('amp_auto', 'fp32 (CPU)')}",
             f"- sizes: {results['sizes']['backbone']} at {results['sizes']['size']} px; total "
             f"{results['seconds']} s", "", "| step | status | seconds |", "|---|---|---|"]
    for name in ("train", "e2e", "predict", "decode", "memory", "compile"):
        if name in results:
            r = results[name]
            lines.append(f"| {name} | {r.get('status')} | {r.get('seconds', '-')} |")
    e2e = results.get("e2e", {}).get("stages", {})
    if e2e:
        lines += ["", "End to end (configs/default.yaml, synthetic faces):", "", "| stage | status | seconds |",
                  "|---|---|---|"]
        lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in e2e.items()]
    for name in ("train", "predict", "decode", "memory", "compile"):
        data = (results.get(name) or {}).get("json")
        if data:
            lines += ["", f"{name}:", "", "```", json.dumps(_brief(data), indent=1, default=str)[:3000], "```"]
    return "\n".join(lines) + "\n"


def _brief(data: Any) -> Any:
    """The harness JSON without its bulky parts (profiles, per-repeat lists)."""
    if isinstance(data, dict):
        return {k: _brief(v) for k, v in data.items() if k not in ("profile", "top_self_cpu", "top_self_cuda", "meta")}
    if isinstance(data, list):
        return [_brief(v) for v in data[:12]]
    return data


if __name__ == "__main__":
    sys.exit(main())
