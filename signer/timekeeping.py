"""Decision time: the clock, never below the latest time already recorded.

The system clock is an input the signer does not control (an NTP step, a VM
restored from a snapshot, libfaketime). Were decision time to follow it back,
an expired session or payment would become valid again and the audit log's
times would go backwards. So time is a high-water mark: the larger of the
clock and the latest time this process handed out, which starts at the time of
the last audit record (O(1): the record at the log's head).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("paywarden.signer.time")


class HighWater:
    def __init__(self, clock: Callable[[], float], floor: int = 0) -> None:
        self._clock = clock
        self._floor = floor
        self._lock = threading.Lock()
        self._warned = False

    def now(self) -> int:
        read = int(self._clock())
        with self._lock:
            if read < self._floor:
                if not self._warned:  # once per step back, not once per call
                    log.warning(
                        "the clock is behind the latest recorded time; keeping that time",
                        extra={"behind_seconds": self._floor - read},
                    )
                    self._warned = True
                return self._floor
            self._warned = False
            self._floor = read
            return read
