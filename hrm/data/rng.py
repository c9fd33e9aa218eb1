"""Version-proof random draws: same seed and spawn key -> the same numbers on every machine and numpy release.

numpy promises stable `SeedSequence` and raw `PCG64` output, not stable `Generator` transforms, so only raw
64-bit words come from numpy and every transform is done here in integer arithmetic. Distinct spawn keys
(generate: `(split_index, base_index, attempt)`) give independent streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
_TWO_POW_64 = 1 << 64
_FLOAT_SCALE = 1.0 / (1 << 53)


def _span_limit(low: int, high: int) -> tuple[int, int]:
    """(span, limit) of [low, high): words >= limit, past the last full multiple of span, are redrawn."""
    span = int(high) - int(low)
    if span <= 0:
        raise ValueError(f"empty range [{low}, {high})")
    return span, _TWO_POW_64 - (_TWO_POW_64 % span)


class StableRng:
    """A seeded stream of raw PCG64 words with hand-written, stable transforms."""

    def __init__(self, seed: int, spawn_key: Sequence[int] = ()) -> None:
        if seed < 0 or any(k < 0 for k in spawn_key):
            raise ValueError("seed and spawn key entries must be non-negative integers")
        self.seed = int(seed)
        self.spawn_key = tuple(int(k) for k in spawn_key)
        self._bits = np.random.PCG64(np.random.SeedSequence(entropy=self.seed, spawn_key=self.spawn_key))

    def raw(self, count: int) -> np.ndarray:
        """`count` raw 64-bit words (uint64)."""
        return np.asarray(self._bits.random_raw(count), dtype=np.uint64)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """A float in [low, high) from the top 53 bits of one word."""
        return low + (high - low) * ((int(self._bits.random_raw()) >> 11) * _FLOAT_SCALE)

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high), exactly uniform (words past the last full multiple are redrawn)."""
        span, limit = _span_limit(low, high)
        while True:
            word = int(self._bits.random_raw())
            if word < limit:
                return int(low) + word % span

    def bernoulli(self, probability: float) -> bool:
        return self.uniform() < probability

    def choice(self, items: Sequence[T]) -> T:
        if not items:
            raise ValueError("choice from an empty sequence")
        return items[self.integer(0, len(items))]

    def sample(self, items: Sequence[T], count: int) -> list[T]:
        """`count` distinct items, in draw order."""
        if count > len(items):
            raise ValueError(f"cannot draw {count} distinct items from {len(items)}")
        pool = list(items)
        for index in range(count):
            other = self.integer(index, len(pool))
            pool[index], pool[other] = pool[other], pool[index]
        return pool[:count]

    def integer_array(self, low: int, high: int, shape: int | tuple[int, ...]) -> np.ndarray:
        """Integers in [low, high), int64, exactly uniform (as `integer`, word for word)."""
        span, limit = _span_limit(low, high)
        largest = np.uint64(limit - 1)  # limit itself may be 2**64, past uint64
        words = self.raw(int(np.prod(shape)))
        rejected = np.flatnonzero(words > largest)
        while rejected.size:  # about span / 2**64 of the words: in practice never
            words[rejected] = self.raw(rejected.size)
            rejected = rejected[words[rejected] > largest]
        return (words % np.uint64(span)).astype(np.int64).reshape(shape) + int(low)
