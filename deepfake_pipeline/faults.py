"""Failpoints: deterministic crash points for the kill-and-resume tests.

Set ``DFP_FAILPOINT=name:n`` (comma-separated for several) and the process kills itself with
SIGKILL the n-th time it reaches ``failpoint(name)``: the same as a power cut or an OOM kill at
exactly that spot. ``name@r:n`` does so only in the process whose torchrun ``RANK`` is r.
Unset (always, outside tests), a failpoint is one dictionary lookup.

Points: ``step`` (after an optimizer step), ``checkpoint_write`` (checkpoint bytes written to the
temporary file, before the rename), ``epoch_end``, ``fold_end``, ``align_batch``, ``audio_clip`` (a
clip's windows written and journaled), ``predict_fold``.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def _targets() -> dict[str, int]:
    spec = os.environ.get("DFP_FAILPOINT", "")
    targets = {}
    rank = os.environ.get("RANK", "0")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition(":")
        name, _, only_rank = name.partition("@")
        if not only_rank or only_rank == rank:
            targets[name] = int(count or 1)
    return targets


def failpoint(name: str) -> None:
    if "DFP_FAILPOINT" not in os.environ:
        return
    target = _targets().get(name)
    if target is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target:
        os.kill(os.getpid(), signal.SIGKILL)
