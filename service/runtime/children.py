"""How every child process of the server stops: when the main process stops it, or when the main process is gone.

Ctrl+C, and `kill -TERM -<pgid>` or a whole-cgroup SIGTERM, reach every process of the group at once. A child that
acted on that itself would cut the drain short (SIGTERM), die mid-loop with a traceback (SIGINT), take LitServe's
manager away while the main process still needs it, and look like a dead child to the supervisor. So each child
ignores SIGINT, and SIGTERM (LitServe's `terminate()`) until the main process has released its children
(`ServerState.release_children`): a signal to the group then does just what one to the main process does. And each
child exits by itself once the main process is gone (a SIGKILL, the OOM killer): a headless server would keep the
port and the devices, and answer /health 200 for nobody.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from ctypes import c_byte
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PARENT_POLL_SECONDS = 0.25

# The pid of the process that forks, noted just before each fork: in the child it names the parent to watch.
_forking_pid = 0


def exit_with_parent(parent_pid: int) -> None:
    """Start a thread that ends this process within PARENT_POLL_SECONDS once `parent_pid` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        logger.warning("the main process (pid %d) is gone; exiting", parent_pid)
        os._exit(0)  # at once, whatever the other threads are doing: nobody is left to answer or to stop us

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def leave_stop_signals_to_main(released: c_byte) -> None:
    """In a spawned worker's main thread: ignore SIGINT, and exit on SIGTERM only once `released` is set."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if released.value:
            os._exit(0)  # what SIGTERM's default does, minus the exit status: the main process asked for it
        # Not yet released: a signal to the whole group; the main process drains, then sends another.

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def prepare_forked_children() -> None:
    """In the main process, before LitServe forks: every child it forks ignores SIGINT and SIGTERM, and exits with
    the main process. LitServe stops the manager with a message, an API server with the SIGTERM that uvicorn's own
    handlers take once serving (deaf to it until released: litserve_adapter `_APIServer`)."""

    def in_child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        exit_with_parent(_forking_pid)

    os.register_at_fork(before=_note_forking_pid, after_in_child=in_child)
