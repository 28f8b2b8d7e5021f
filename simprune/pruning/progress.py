"""Progress of a pruning run on stderr: one tqdm line per stage.

tqdm handles terminals, notebooks (stderr is shown there too) and plain logs. The console ``tqdm``
is used rather than ``tqdm.auto``: in a notebook the latter needs ipywidgets (not a dependency;
without it tqdm warns and falls back to the console bar anyway) and draws a widget instead of
writing to stderr.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# A stage without a count shows its name and, once it is over, how long it took.
_PLAIN = "{desc} [{elapsed}]"


class Progress:
    """``with Progress(enabled) as bar: bar.stage("descriptors", 3, 10)``: one line per stage.

    ``stage(name)`` starts a stage without a count; ``stage(name, done, total)`` starts (or
    advances) a counted stage with a bar. Starting a stage ends the previous one. ``enabled=False``
    prints nothing.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.enabled = enabled
        self.stream = stream
        self._t0 = time.perf_counter()
        self._name: str | None = None
        self._bar: tqdm | None = None

    def stage(self, name: str, done: int = 0, total: int = 0) -> None:
        if not self.enabled:
            return
        if name != self._name or self._bar is None:
            self._close()
            self._name = name
            if name == "done":  # the last line: the whole run's time
                self._write(f"simprune: done in {time.perf_counter() - self._t0:.1f} s")
                return
            self._bar = tqdm(
                total=total or None,
                desc=f"simprune: {name}",
                file=self.stream or sys.stderr,
                bar_format=None if total else _PLAIN,
                dynamic_ncols=True,
                leave=True,
            )
        if total and self._bar is not None:
            self._bar.update(done - self._bar.n)

    def _write(self, msg: str) -> None:
        tqdm.write(msg, file=self.stream or sys.stderr)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
