"""Stage 2: SimMIM masked-image pretraining of the forensic ConvNeXt V2 encoder.

Reads the aligned faces (train, plus test when ``ssl.include_test``), writes under
``<run>/ssl/``: ``last.pt`` (full state, for resume), ``metrics.jsonl``, ``encoder.safetensors``
(the backbone's weights, loaded by the fine-tuning stage) and ``done.json``.
"""

from __future__ import annotations

import logging
import shutil

import torch

from .artifacts import RunPaths, faces_fingerprint, load_faces, usable_faces
from .augment import augment_for, input_fit, train_jpeg
from .checkpoint import read_done, save_weights, write_done
from .config import Config, stage_hash
from .dataset import FaceDataset
from .engine import ComputeLoss, LoopSpec, TrainLoop
from .errors import PipelineError, StaleOutputError
from .runtime import Runtime, derive_seed, seed_everything
from .simmim import SimMIM, generate_masks

log = logging.getLogger(__name__)


def ssl_hash(cfg: Config, fingerprint: str) -> str:
    return stage_hash(cfg, ["model", "ssl"], extra={"faces": fingerprint, "seed": cfg.run.seed})


def masked_image_loss(model: SimMIM, mask_ratio: float) -> ComputeLoss:
    """SimMIM's loss with fresh masks per micro-batch, drawn from the step-seeded CPU generator (a
    resumed run draws the same ones) and copied to the device without waiting for it."""

    def compute_loss(module: torch.nn.Module, x: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        grid_h, grid_w = model.mask_grid(*x.shape[-2:])
        masks = generate_masks(x.shape[0], grid_h, grid_w, mask_ratio, None, torch.device("cpu"))
        if x.is_cuda:
            masks = masks.pin_memory()  # a pageable host copy could wait for the queued step
        loss, _ = module(x, masks.to(x.device, non_blocking=True))
        return loss

    return compute_loss


def run_ssl(cfg: Config, runtime: Runtime, paths: RunPaths, force: bool = False) -> None:
    if not cfg.ssl.enabled:
        log.info("ssl: disabled (ssl.enabled=false), skipped")
        return
    faces = load_faces(cfg)
    h = ssl_hash(cfg, faces_fingerprint(faces))
    out = paths.ssl
    done = read_done(out)
    if force and runtime.is_main and out.exists():
        shutil.rmtree(out)
    runtime.barrier()
    if not force and done is not None:
        if done.get("hash") == h and paths.encoder.is_file():
            log.info("ssl: already finished with these settings (%s), skipped; --force redoes it", out)
            return
        raise StaleOutputError(
            f"{out} holds an SSL stage finished with other settings or inputs (hash {done.get('hash')}, "
            f"now {h}); rerun with --force to redo it, or use another run.name"
        )

    splits = ["train", "test"] if cfg.ssl.include_test else ["train"]
    rows = [usable_faces(faces, s) for s in splits]
    paths_list = [p for frame in rows for p in frame["path"]]
    if not paths_list:
        raise PipelineError("ssl: no aligned faces to train on")
    dataset = FaceDataset(paths_list, jpeg=train_jpeg(cfg.ssl.aug, derive_seed(cfg.run.seed, "ssl")))
    seed_everything(derive_seed(cfg.run.seed, "init", "ssl"))
    model = SimMIM(cfg.model, mask_patch=cfg.ssl.mask_patch, remask=cfg.ssl.remask)
    augment = augment_for(cfg, cfg.ssl.aug).to(runtime.device)
    # The input fit (resize, or a random native-resolution window), then the augmentations.
    prepare = input_fit(cfg.model).then(augment.prepare)

    compute_loss = masked_image_loss(model, cfg.ssl.mask_ratio)

    spec = LoopSpec(
        name="ssl", out_dir=out, epochs=cfg.ssl.epochs, batch_size=cfg.ssl.batch_size, optim=cfg.ssl.optim,
        seed=cfg.run.seed, stage_hash=h, workers=cfg.run.workers, save_every=cfg.ssl.save_every,
        compile=cfg.run.compile, compile_backend=cfg.run.compile_backend, progress=cfg.run.progress,
    )
    log.info("ssl: %d faces (%s), %s, mask ratio %.2f at %d px patches, %s", len(dataset), "+".join(splits),
             cfg.model.backbone, cfg.ssl.mask_ratio, cfg.ssl.mask_patch, runtime.describe())
    loop = TrainLoop(spec, runtime, model, dataset, compute_loss, prepare=prepare)
    summary = loop.run()
    if runtime.is_main:
        save_weights(paths.encoder, model.encoder_state_dict(), metadata={"stage_hash": h, "backbone": cfg.model.backbone})
        write_done(out, h, **summary)
        log.info("ssl: done in %.0f s, %d steps; encoder -> %s", summary["seconds"], summary["steps"], paths.encoder)
    runtime.barrier()
