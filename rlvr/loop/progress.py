"""Progress for training steps, generation and evaluation.

Design: one small wrapper, :func:`progress`, with three behaviours chosen once:
a tqdm bar when the stream is a terminal; plain ``desc: 40/100 (40%) ...`` lines
when it is not (CI, Ray job logs, ``| tee``), at a bounded rate -- a line each
time another ``every_pct`` percent is done or ``every_s`` seconds have passed,
plus a final line -- so logs stay readable; and nothing at all when disabled
(``LoggingConfig.progress=false``).  The call sites are the same in all three.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, TextIO, Union


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """A progress bar over an iterable or a count; see :func:`progress`."""

    def __init__(
        self,
        iterable: Optional[Iterable],
        total: Optional[int],
        desc: str,
        mode: str,
        stream: TextIO,
        every_pct: float,
        every_s: float,
        leave: bool,
    ) -> None:
        self.iterable, self.total, self.desc, self.mode, self.stream = iterable, total, desc, mode, stream
        self.n = 0
        self.postfix: dict = {}
        self._every_pct, self._every_s = every_pct, every_s
        self._start = self._last_line_t = time.monotonic()
        self._last_line_n = 0
        self._last_bucket = 0
        self._closed = False
        self._bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, file=stream, leave=leave, dynamic_ncols=True)

    # ----------------------------------------------------------------- updates
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError(f"progress '{self.desc}' was made from a count, not an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and self._line_due():
            self._line()

    def set_postfix(self, values: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        """Key/value pairs shown after the count (e.g. ``reward=0.31``); replaces the previous ones."""
        self.postfix = {**(values or {}), **kwargs}
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar (e.g. the per-step metrics line)."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n != self._last_line_n:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- plain lines
    def _line_due(self) -> bool:
        if time.monotonic() - self._last_line_t >= self._every_s:
            return True
        if self.total and self._every_pct > 0:
            bucket = int(100.0 * self.n / self.total // self._every_pct)
            return bucket > self._last_bucket
        return False

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        count = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        rate = f"{self.n / elapsed:.3g}/s" if elapsed > 0 else "-"
        post = "".join(f" {k}={_fmt(v)}" for k, v in self.postfix.items())
        print(f"{self.desc}: {count} [{elapsed:.1f}s, {rate}]{post}", file=self.stream, flush=True)
        self._last_line_t, self._last_line_n = now, self.n
        if self.total and self._every_pct > 0:
            self._last_bucket = int(100.0 * self.n / self.total // self._every_pct)


def progress(
    iterable_or_total: Union[Iterable, int, None],
    desc: str,
    enabled: bool = True,
    *,
    total: Optional[int] = None,
    stream: Optional[TextIO] = None,
    every_pct: float = 10.0,
    every_s: float = 30.0,
    leave: bool = True,
) -> Progress:
    """A progress bar: iterate it (``for x in progress(xs, "eval")``) or ``update()`` it by hand.

    ``iterable_or_total`` is an iterable (its ``len`` is the total when it has one) or a count
    (None: unknown).  ``stream`` defaults to stdout; when it is not a terminal the bar becomes
    plain lines, at most one per ``every_pct`` percent or ``every_s`` seconds, plus a last one.
    ``enabled=False`` (``LoggingConfig.progress``) prints nothing.
    """
    stream = sys.stdout if stream is None else stream
    iterable = None
    if isinstance(iterable_or_total, int) and not isinstance(iterable_or_total, bool):
        total = iterable_or_total if total is None else total
    elif iterable_or_total is not None:
        iterable = iterable_or_total
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
    mode = "off" if not enabled else ("bar" if _is_tty(stream) else "lines")
    return Progress(iterable, total, desc, mode, stream, every_pct, every_s, leave)
