"""Stopping a run between steps on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
import time

from diffrep import distributed


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM during training, as a flag the loop reads between steps.

    The loop then checkpoints the finished step and stops (``KeyboardInterrupt``), so a checkpoint
    never holds a half-done step (an optimiser update without its step count).  A second signal
    stops at once, without a checkpoint: the last one on disk is intact.  Repeats within
    :attr:`REPEAT_S` seconds count as the first (torchrun forwards the signal a worker may also get
    from the terminal or from Slurm).  Outside the main thread (where Python cannot install
    handlers) signals keep their usual effect.
    """

    REPEAT_S = 2.0

    def __init__(self):
        self.requested = False
        self._first: float | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self._first is not None:
            if time.monotonic() - self._first > self.REPEAT_S:
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, time.monotonic()
        if distributed.current().is_main:
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  "(signal again to stop at once, without one)", file=sys.stderr, flush=True)
