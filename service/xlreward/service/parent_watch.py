"""A server started for one process (the loop's, ``xlreward rl``'s, the demo's) stops when that process is
gone, however it went: a SIGKILLed loop must not leave a server holding its models (and GPU memory).

The parent's exit is seen as the server being handed to another parent (``os.getppid()`` changes when a
parent dies), checked every second on a daemon thread; the server then gets SIGTERM, as a user's Ctrl-C
would, and exits hard if it has not stopped after a grace period (a request stuck in a forward pass)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

POLL_S = 1.0
GRACE_S = 30.0
logger = logging.getLogger("xlreward.service")


def watch_parent(pid: int, *, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> threading.Thread:
    """Starts the watch. ValueError if ``pid`` is not this process's parent (it would stop at once)."""
    if os.getppid() != pid:
        raise ValueError(f"process {pid} is not this server's parent (that is {os.getppid()})")

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(poll_s)
        logger.warning("the process that started this server (%d) is gone: stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
