"""SIGINT / SIGTERM during a run: finish (or abandon) the work in flight, then stop cleanly.

Design: the first signal only records itself; the run ends the step in flight, checkpoints the
last completed step and raises :class:`Interrupted`, which the entry point turns into exit 130
(SIGINT) or 143 (SIGTERM) without a stack dump.  During set-up or an evaluation
(``abandonable``) the signal cuts the work short at once.  A second signal exits immediately.
Ray installs its own SIGTERM handler in the driver, so the run re-installs these after
``ray.init`` and after the actors start.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional


class Interrupted(Exception):
    """A SIGINT/SIGTERM stopped the run after ``step``; ``checkpoint`` resumes it (None: nothing saved)."""

    def __init__(self, signum: int, step: int = 0, checkpoint: Optional[str] = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopSignals:
    """SIGINT/SIGTERM as a request to stop at the next step boundary; a second one exits at once.

    While ``abandon`` is set (set-up, evaluations) the first signal raises :class:`Interrupted`
    where the driver is; otherwise it only records ``signum`` and the loop stops after the step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.abandon = True
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` sets its own SIGTERM handler, and ours must win."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"[rlvr] {name} again: exiting at once\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        what = "stopping now (set-up or evaluation abandoned)" if self.abandon else "stopping after the step in flight"
        os.write(2, f"[rlvr] {name}: {what} (again to exit at once)\n".encode())  # print() may be mid-write
        if self.abandon:
            raise Interrupted(signum)

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        """A section (set-up, an evaluation) that a signal cuts short: it leaves as :class:`Interrupted`.

        The handler's exception can surface as another one (raised inside Ray's C++ code it becomes
        a ``SystemError``), so whatever leaves the section after a signal is the interruption.
        """
        if self.signum is not None:
            raise Interrupted(self.signum)
        self.abandon = True
        try:
            yield
        except Exception as exc:  # re-raised, or replaced by the interruption that caused it
            if self.signum is None or isinstance(exc, Interrupted):
                raise
            raise Interrupted(self.signum) from exc
        finally:
            self.abandon = False
