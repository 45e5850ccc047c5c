"""Read planning: the fewest requests of at most 125 registers that cover the wanted models.

Requests may span gaps between wanted models, never a register known to be unreadable. Among plans with the
fewest requests, one that cuts at model boundaries is preferred, so a value and its scale factor come from the
same request wherever the register limit allows.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

MAX_READ = 125


@dataclass(frozen=True, slots=True)
class Span:
    """A contiguous register range ``[start, start + count)``."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


def _wanted_addresses(blocks: Iterable[Span], unreadable: frozenset[int]) -> list[int]:
    addrs: set[int] = set()
    for b in blocks:
        addrs.update(range(b.start, b.end))
    return sorted(addrs - unreadable)


def plan_reads(blocks: Sequence[Span], unreadable: Iterable[int] = (), max_read: int = MAX_READ) -> tuple[Span, ...]:
    """Requests covering every readable register of ``blocks`` (model blocks: ID, L and body).

    Optimal in the number of requests (covering points on a line with windows of bounded length, each window
    stopping short of the next unreadable register); ties prefer windows that end on a block boundary.
    """
    bad = frozenset(unreadable)
    want = _wanted_addresses(blocks, bad)
    if not want:
        return ()
    bad_sorted = sorted(bad)
    boundaries = sorted({b.start for b in blocks} | {b.end for b in blocks})

    def window_limit(start: int) -> int:
        limit = start + max_read
        i = bisect.bisect_right(bad_sorted, start)
        if i < len(bad_sorted):
            limit = min(limit, bad_sorted[i])
        return limit

    @cache
    def best(i: int) -> tuple[int, int, tuple[Span, ...]]:
        """(requests, cuts inside a block, plan) covering want[i:]."""
        if i >= len(want):
            return (0, 0, ())
        start = want[i]
        limit = window_limit(start)
        options = {limit}
        j = bisect.bisect_right(boundaries, limit) - 1  # the last block boundary inside the window
        if j >= 0 and boundaries[j] > start:
            options.add(boundaries[j])
        results = []
        for end in options:
            k = bisect.bisect_left(want, end)
            last = want[k - 1] + 1  # trim the window to the last wanted register it covers
            n, cuts, rest = best(k)
            inside = 0 if end in boundaries or k >= len(want) else 1
            results.append((n + 1, cuts + inside, (Span(start, last - start), *rest)))
        return min(results, key=lambda r: (r[0], r[1]))

    return best(0)[2]
