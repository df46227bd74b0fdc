"""Stage-1 worker processes: forked from a clean forkserver, and ended with the stage that started them.

Both stage-1 pools (alignment's DataLoader workers, the audio stage's process pool) use this. Standard
library only: a worker that unpickles :func:`exit_with` imports nothing heavier.

- :func:`forkserver_context`: a plain fork copies the stage's OpenCV/OpenMP thread pools without their
  threads, and a forked worker then hangs in its first OpenCV call once the stage has used them (an
  earlier run in the same process, the crop writers). The forkserver imports the worker's module
  once and then forks clean workers quickly.
- :func:`lifeline` + :func:`exit_with`: a worker's parent is the forkserver, not the stage, and it waits
  on a queue it holds both ends of (a DataLoader's watchdog watches the forkserver), so a SIGKILLed
  stage would leave it waiting forever, holding the stage's stdout open. The stage keeps the write
  end of a pipe and every worker watches the read end: end-of-file means the stage is gone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext


def forkserver_context(preload: list[str]) -> BaseContext:
    """A forkserver context whose server imports the ``preload`` modules once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ctx


def lifeline(ctx: BaseContext) -> tuple[Connection, Connection]:
    """(read end for the workers, write end the stage holds open while it lives): close both when done."""
    return ctx.Pipe(duplex=False)


def exit_with(stage: Connection) -> None:
    """Worker start: exit this process as soon as the stage holding ``stage``'s write end is gone.

    The worker also drops its copy of the forkserver's own "client alive" pipe: that copy would keep
    the forkserver running after the stage is killed (1 GB left behind per kill).
    """
    from multiprocessing import forkserver

    alive = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            stage.recv_bytes()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-stage", daemon=True).start()
