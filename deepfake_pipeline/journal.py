"""Stage-1 bookkeeping shared by faces (align.py) and speech (audio_stage.py), free of torch.

Shards (``--shard i/n`` or the torchrun rank), the per-shard append-only journal that makes a
killed stage resume where it stopped (a line is appended only after its outputs are in place; a
torn last line is ignored and cut off), the choice of splits, and the clean-up of temporary files
that a kill left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


# ---------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"--shard {self.index}/{self.count}: need 0 <= i < n")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> Shard(i, n)."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/2") from None
    return Shard(i, n)


def shard_from_env() -> Shard:
    """RANK/WORLD_SIZE under torchrun, else the single shard 0/1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Shard(int(os.environ.get("RANK", "0")), world) if world > 1 else Shard()


# ---------------------------------------------------------------- journal


def journal_dir(out: Path) -> Path:
    return out / ".journal"


def read_journals(out: Path) -> Iterator[dict[str, Any]]:
    """Every complete JSON line of every journal (torn or garbled lines are skipped)."""
    folder = journal_dir(out)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a torn last line from a kill
                try:
                    entry = json.loads(raw)
                except ValueError:
                    log.warning("%s: skipping a garbled journal line", path)
                    continue
                if isinstance(entry, dict):
                    yield entry


class Journal:
    """Append-only JSON-lines file of one shard; locked against a second writer."""

    def __init__(self, path: Path, truncate: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[bytes] = open(path, "ab+")  # noqa: SIM115 (closed in close())
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise PipelineError(f"{path} is in use: is the same shard already running?") from None
        if truncate:
            self._fh.truncate(0)
        else:
            self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        self._fh.seek(0)
        data = self._fh.read()
        if data and not data.endswith(b"\n"):
            self._fh.truncate(data.rfind(b"\n") + 1)
        self._fh.seek(0, os.SEEK_END)

    def append(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        self._fh.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- splits, temporary files


def remove_old_temps(folder: Path, min_age_s: float) -> int:
    """images.remove_stale_temps, sparing temp files young enough to belong to a running shard."""
    count, now = 0, time.time()
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                count += 1
    return count


def journal_in_use(journal: Path) -> bool:
    """Whether another process holds this journal's lock (a shard is running)."""
    try:
        with open(journal, "rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def selected_splits(splits: str | tuple[str, ...]) -> tuple[str, ...]:
    chosen = SPLITS if splits in ("all", None) else ((splits,) if isinstance(splits, str) else tuple(splits))
    unknown = [s for s in chosen if s not in SPLITS]
    if unknown:
        raise ConfigError(f"--split {unknown[0]!r}: expected train, test or all")
    return chosen


@contextlib.contextmanager
def shard_journal(out: Path, chosen: tuple[str, ...], shard: Shard, force: bool) -> Iterator[Journal]:
    """The shard's journal, locked (``force`` empties it), once the output folders exist and a killed
    run's temporary files are gone (while another shard runs, only old ones: its own are fresh)."""
    path = journal_dir(out) / f"{'-'.join(chosen)}-{shard.index}-of-{shard.count}.jsonl"
    with Journal(path, truncate=force) as journal:
        others = any(journal_in_use(p) for p in journal_dir(out).glob("*.jsonl") if p != path)
        for folder in (out, out / "train", out / "test"):
            folder.mkdir(parents=True, exist_ok=True)
            remove_old_temps(folder, min_age_s=120.0 if others else 0.0)
        yield journal
