"""Child processes that die with their parent and do not share its terminal's signals."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux only: if the parent is SIGKILLed, the kernel sends the child SIGTERM.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: Sequence[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C in the terminal reaches only the parent, which
    then stops children in order) that is terminated if the parent dies."""
    return subprocess.Popen(
        list(args), env=env, start_new_session=True, preexec_fn=_die_with_parent, **kwargs
    )


def stop_all(children: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM each child in the given order, waiting for each; SIGKILL after the grace."""
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
