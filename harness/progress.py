"""Progress of long work on stderr, quiet in logs: ``Progress`` (``python -m harness train`` and
``run``). Besides ``harness.cli``, the only module that writes to the terminal."""

from __future__ import annotations

import sys


class Progress:
    """Progress of long work on stderr: a tqdm bar on a terminal; in a log (stderr not a
    terminal) a few plain lines instead of a redrawn bar -- one per tenth of the work, or with
    ``every_item`` one per finished item (the runs of a grid) -- so that a captured log stays
    readable (a redrawn bar wrote ~650 lines into the log of one 100k-frame ``train``)."""

    def __init__(self, total: int, desc: str, unit: str, *, every_item: bool = False,
                 file=None):
        self.total, self.desc, self.unit, self.every_item = total, desc, unit, every_item
        self.file = file or sys.stderr
        self.n = 0
        self._bar = None
        self._next_line = 0.1
        self._start = 0.0
        if self.file.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=not every_item,
                             dynamic_ncols=True, file=self.file,
                             bar_format=("{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<"
                                         "{remaining}] {postfix}") if every_item else None)

    def __enter__(self):
        import time

        self._start = time.monotonic()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def note(self, text: str) -> None:
        """What is going on now (the bar's postfix; not written to a log)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def write(self, line: str) -> None:
        """A line that must be read (a failure), above the bar or in the log."""
        if self._bar is not None:
            self._bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def advance_to(self, n: int, total: int | None = None, note: str = "") -> None:
        import time

        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.update(n - self._bar.n)
            if note and not self.every_item:
                self._bar.set_postfix_str(note)
            self.n = n
            return
        self.n = n
        done = n / self.total if self.total else 1.0
        if self.every_item or done >= self._next_line or n >= self.total:
            while self._next_line <= done:
                self._next_line += 0.1
            elapsed = time.monotonic() - self._start
            print(f"{self.desc}: {n:,}/{self.total:,} {self.unit}s ({done:.0%}), "
                  f"{elapsed:.0f} s" + (f"; {note}" if note else ""), file=self.file,
                  flush=True)
