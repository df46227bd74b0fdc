"""Runs the training stages in order for ``train.py`` (each one resumable and skippable)."""

from __future__ import annotations

import logging
import time

from .artifacts import run_paths, save_run_config
from .config import Config
from .runtime import init_runtime, seed_everything, shutdown_runtime

log = logging.getLogger(__name__)

STAGES = ("ssl", "finetune", "predict")


def run_stages(cfg: Config, stage: str, force: bool = False) -> int:
    from .finetune import run_finetune
    from .predict import run_predict
    from .pretrain import run_ssl

    runners = {"ssl": run_ssl, "finetune": run_finetune, "predict": run_predict}
    runtime = init_runtime(cfg.run.device, cfg.run.amp, cfg.run.channels_last)
    seed_everything(cfg.run.seed)
    paths = run_paths(cfg)
    try:
        if runtime.is_main:
            paths.root.mkdir(parents=True, exist_ok=True)
            save_run_config(cfg, paths)
        runtime.barrier()
        for name in STAGES if stage == "all" else (stage,):
            started = time.time()
            runners[name](cfg, runtime, paths, force=force)
            log.info("stage %s finished in %.1f s (%s)", name, time.time() - started, paths.root)
    finally:
        shutdown_runtime(runtime)
    return 0
