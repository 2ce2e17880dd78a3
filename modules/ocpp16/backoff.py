"""Randomized exponential reconnect back-off (pure; the random source is an input).

The scheme of OCPP 2.0.1 part 4 §5, which libocpp also uses for 1.6 with the keys RetryBackoffWaitMinimum,
RetryBackoffRandomRange and RetryBackoffRepeatTimes: the first redial waits WaitMinimum plus a random
part of up to RandomRange; every further failed attempt doubles the fixed part, up to RepeatTimes
doublings, and then the wait stays there. Each wait gets a fresh random part, so many stations dropped by
the same CSMS restart do not redial in step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

MAX_REPEAT_TIMES = 30  # 2**30 times the minimum is already decades; more would overflow a float
RandomSource = Callable[[], float]
"""Returns a float in [0, 1), like ``random.random``."""


@dataclass(frozen=True)
class BackoffPolicy:
    wait_minimum_s: float = 3.0
    random_range_s: float = 10.0
    repeat_times: int = 3

    def __post_init__(self) -> None:
        for key, value in (("RetryBackoffWaitMinimum", self.wait_minimum_s),
                           ("RetryBackoffRandomRange", self.random_range_s)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise ValueError(f"{key} must be a finite number >= 0 (seconds), got {value!r}")
        repeat = self.repeat_times
        if not isinstance(repeat, int) or isinstance(repeat, bool) or not 0 <= repeat <= MAX_REPEAT_TIMES:
            raise ValueError(f"RetryBackoffRepeatTimes must be an integer from 0 to {MAX_REPEAT_TIMES}, got {repeat!r}")

    def fixed_part_s(self, attempt: int) -> float:
        """The wait before redial number ``attempt`` (1 = first redial) without its random part."""
        if attempt < 1:
            raise ValueError(f"reconnect attempt numbers start at 1, got {attempt}")
        return self.wait_minimum_s * 2 ** min(attempt - 1, self.repeat_times)

    def delay_s(self, attempt: int, random: RandomSource) -> float:
        """Seconds to wait before redial number ``attempt``: fixed part + random part in [0, RandomRange)."""
        fraction = random()
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"the random source must return a value in [0, 1), got {fraction!r}")
        return self.fixed_part_s(attempt) + fraction * self.random_range_s

    def longest_delay_s(self) -> float:
        """Upper bound of every delay this policy returns."""
        return self.wait_minimum_s * 2**self.repeat_times + self.random_range_s
