"""Checkpoint and weight files: atomic writes, safe loads, stage completion records.

``last.pt`` files hold the full training state and are loaded with ``weights_only=True``: a file
that tries to unpickle code is refused. Final weights are safetensors. A stage records that it
finished, and with which settings, in ``done.json``.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, StaleOutputError
from .faults import failpoint
from .images import atomic_path, atomic_write_text


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        failpoint("checkpoint_write")


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a ``.pt`` state without executing pickled code (``weights_only=True``)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds more than tensors and plain values (pickled code?): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint: {str(exc).splitlines()[0]}") from exc


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types; report them as one kind
        raise CheckpointError(f"{path}: unreadable safetensors file: {exc}") from exc


def read_done(folder: Path) -> dict[str, Any] | None:
    path = folder / "done.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn record counts as not done; the stage reruns and rewrites it


def write_done(folder: Path, stage_hash: str, **info: Any) -> None:
    record = {"hash": stage_hash, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    atomic_write_text(folder / "done.json", json.dumps(record, indent=2, default=str))


def check_resumable(state: dict[str, Any], expected_hash: str, path: Path) -> None:
    """Refuse to resume from a checkpoint made with other settings (never reuse silently)."""
    found = state.get("stage_hash")
    if found != expected_hash:
        raise StaleOutputError(
            f"{path} was written with other settings (hash {found}, now {expected_hash}); "
            "rerun with --force to start this stage over, or use another run.name"
        )
