"""Stopping on request: SIGTERM and SIGUSR1 (what SLURM and cloud preemption send), SIGINT (Ctrl-C).

While the training loop runs, a signal only sets a flag: the loop finishes the step in hand, writes
its rows, saves a checkpoint and raises `Stopped`; the same command then resumes exactly. Outside
the loop (start-up, compilation) SIGTERM/SIGUSR1 raise `Stopped` at once and Ctrl-C raises
KeyboardInterrupt as usual: nothing is half-written there (every record write is atomic or an
appended line). A second Ctrl-C inside the loop interrupts at once.

Exit codes of the commands: 75 (EX_TEMPFAIL) after SIGTERM/SIGUSR1, 130 after Ctrl-C, 3 after an
early warning with `train.monitor.action=stop` (proxies/monitor.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class Stopped(Exception):
    """A run (or sweep) stopped on a signal with its records and a checkpoint saved."""

    def __init__(self, signame: str, step: Optional[int] = None):
        self.signame, self.step = signame, step
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"stopped by {signame}{at}; checkpoint and records saved, rerun the "
                         "same command to resume")

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signame == "SIGINT" else EXIT_PREEMPTED


EXIT_WARNED = 3  # train.monitor.action=stop ended the run on an early warning


class WarnedStop(Stopped):
    """A run ended by its early warning (`train.monitor.action=stop`), its records and a
    checkpoint saved: the same run resumes with `train.monitor.action=log`."""

    def __init__(self, warning_line: str, step: int):
        self.signame, self.step = "early warning", step
        Exception.__init__(self, f"stopped at step {step} by the {warning_line}; checkpoint and "
                           "records saved, rerun with train.monitor.action=log to go on")

    @property
    def exit_code(self) -> int:
        return EXIT_WARNED


class StopRequest:
    """The flag the loop polls once per step (`requested`), set by the handlers while armed."""

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        self.armed = False

    def handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.armed:
            # Set before raising: an exception raised inside a callback Python calls for us
            # (JAX's garbage-collection hook) is printed and dropped, and the flag still stops
            # the next loop or poll (`check`).
            self.requested = self.requested or name
            if name == "SIGINT":
                raise KeyboardInterrupt
            raise Stopped(name)
        if self.requested == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = self.requested or name

    def check(self) -> None:
        """Raise `Stopped` if a signal has arrived: for waits that poll, so a signal whose
        exception was dropped still ends them."""
        if self.requested is not None:
            raise Stopped(self.requested)

    @contextlib.contextmanager
    def armed_loop(self) -> Iterator["StopRequest"]:
        self.armed = True
        try:
            yield self
        finally:
            self.armed = False


_CURRENT: Optional[StopRequest] = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Install the handlers (main thread only; nested calls share the outer request)."""
    global _CURRENT
    if _CURRENT is not None or threading.current_thread() is not threading.main_thread():
        yield _CURRENT or StopRequest()
        return
    req = StopRequest()
    sigs = [getattr(signal, s) for s in SIGNALS if hasattr(signal, s)]
    old = {s: signal.signal(s, req.handle) for s in sigs}
    _CURRENT = req
    try:
        yield req
    finally:
        _CURRENT = None
        for s, h in old.items():
            signal.signal(s, h)
