"""Progress of a long command: a live bar on a terminal (tqdm), plain periodic log lines elsewhere
(CI, ``ray job submit`` logs), where a redrawn bar would only fill the log with carriage returns."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)


class Progress:
    def __init__(
        self,
        total: int,
        unit: str,
        description: str,
        log_every_s: float = 30.0,
        live: bool | None = None,
        initial: int = 0,
    ) -> None:
        self.total, self.unit, self.description = total, unit, description
        self.done = self._initial = initial
        self.started = self._last_log = time.monotonic()
        self.log_every_s = log_every_s
        self._bar: Any = None
        self._redirect: Any = None
        if sys.stderr.isatty() if live is None else live:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit=unit, desc=description, dynamic_ncols=True, file=sys.stderr
            )
            # Log lines print above the bar instead of breaking it.
            self._redirect = logging_redirect_tqdm(loggers=[logging.root])
            self._redirect.__enter__()

    def add_to_total(self, count: int) -> None:
        """For work whose size is learned as it starts (Tune trials)."""
        self.total += count
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, count: int, **postfix: Any) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(count)
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s or self.done >= self.total:
            self._last_log = now
            elapsed = now - self.started
            done_here = self.done - self._initial  # a resumed run's earlier part took no time here
            eta = elapsed / done_here * (self.total - self.done) if done_here else float("nan")
            extra = "".join(f", {key} {value}" for key, value in postfix.items())
            logger.info(
                "%s: %d/%d %s (%.0f%%), %.0fs elapsed, ETA %.0fs%s",
                self.description,
                self.done,
                self.total,
                self.unit,
                100 * self.done / max(1, self.total),
                elapsed,
                eta,
                extra,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._redirect.__exit__(None, None, None)
            self._bar.close()
