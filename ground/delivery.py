"""Exactly-once bookkeeping of one stream's views: which sequence numbers were applied, which are
missing, which came late.

Sequence numbers are per stream, uint32 on the wire, and wrap. Here they are *unwrapped* into
unbounded integers: each new number is placed at the signed 32-bit distance from the highest one
seen so far (so 0xFFFFFFFF followed by 0 is a step of +1, and 5 followed by 4 a step of -1). The set
of applied numbers is a sorted list of disjoint half-open intervals ``[a, b)``: its size grows with
the number of gaps, not with the number of views.

An edge whose code log was wiped starts its numbers again (at 0) under a new stream-info epoch. The
ground sees that (:meth:`StreamDelivery.restart`) and opens a new *incarnation* of the stream: its
numbers are placed after every number the stream used before (an offset, ``base``), so the new views
are new views, not duplicates of the old ones, and the missing-view count stays exact across it.
"""

from __future__ import annotations

import bisect

WRAP = 1 << 32
MASK = WRAP - 1
#: The largest jump (ahead of the highest number seen, or behind the lowest) accepted as a sequence
#: number of the same stream: 2^24 views is 97 days at 2 views/s. Beyond it a number is ``bad_seq``.
MAX_SEQ_JUMP = 1 << 24
#: Numbers left free after an incarnation when an edge restarts (2^16 views, 9 hours at 2 views/s): the
#: old run's views that were still on the link, or sent while its restart went unseen, come after the
#: restart is seen and are placed there (their run tag says which run made them), never counted missing.
RESTART_SLACK = 1 << 16


class SeqSet:
    """Applied sequence numbers of one stream (unwrapped), as disjoint intervals.

    Attributes:
        high: the highest unwrapped number applied (None before the first).
        low: the lowest unwrapped number applied (None before the first).
    """

    def __init__(self) -> None:
        self._a: list[int] = []  # interval starts, sorted
        self._b: list[int] = []  # interval ends (exclusive)
        self.high: int | None = None
        self.low: int | None = None
        self.count = 0

    def unwrap(self, seq: int, ref: int | None = None) -> int:
        """The unwrapped number of a wire ``seq`` (uint32), nearest to ``ref`` (default: the highest seen).

        Before any number is known, the wire value itself.
        """
        ref = self.high if ref is None else ref
        if ref is None:
            return int(seq) & 0xFFFFFFFF
        d = (int(seq) - ref) & 0xFFFFFFFF
        if d >= WRAP // 2:
            d -= WRAP
        return ref + d

    def __contains__(self, u: int) -> bool:
        i = bisect.bisect_right(self._a, u) - 1
        return i >= 0 and u < self._b[i]

    def add(self, u: int) -> bool:
        """Mark ``u`` applied; returns False if it already was (a duplicate)."""
        i = bisect.bisect_right(self._a, u) - 1
        if i >= 0 and u < self._b[i]:
            return False
        join_left = i >= 0 and self._b[i] == u
        join_right = i + 1 < len(self._a) and self._a[i + 1] == u + 1
        if join_left and join_right:
            self._b[i] = self._b[i + 1]
            del self._a[i + 1], self._b[i + 1]
        elif join_left:
            self._b[i] = u + 1
        elif join_right:
            self._a[i + 1] = u
        else:
            self._a.insert(i + 1, u)
            self._b.insert(i + 1, u + 1)
        self.count += 1
        self.high = u if self.high is None else max(self.high, u)
        self.low = u if self.low is None else min(self.low, u)
        return True

    def missing_ranges(self, lo: int, hi: int, limit: int | None = None) -> list[tuple[int, int]]:
        """Inclusive ranges ``(a, b)`` of numbers in ``[lo, hi]`` not applied, in order (at most ``limit``)."""
        out: list[tuple[int, int]] = []
        if hi < lo:
            return out
        cur = lo
        i = max(bisect.bisect_right(self._a, lo) - 1, 0)
        while i < len(self._a) and cur <= hi:
            a, b = self._a[i], self._b[i]
            if b <= cur:
                i += 1
                continue
            if a > cur:
                out.append((cur, min(a - 1, hi)))
                if limit is not None and len(out) >= limit:
                    return out
            cur = max(cur, b)
            i += 1
        if cur <= hi:
            out.append((cur, hi))
        return out[:limit] if limit is not None else out

    def missing_count(self, lo: int, hi: int) -> int:
        """How many numbers in ``[lo, hi]`` were not applied (0 if ``hi < lo``)."""
        return sum(b - a + 1 for a, b in self.missing_ranges(lo, hi))

    def intervals(self) -> list[tuple[int, int]]:
        """The applied numbers as inclusive ranges ``(a, b)``."""
        return [(a, b - 1) for a, b in zip(self._a, self._b)]


class StreamDelivery:
    """Per-stream delivery state: applied numbers, what the edge says it sent, late arrivals.

    The range a stream is expected to cover runs from its first number (the stream info's
    ``first_seq`` where the edge says it, else the lowest number applied) to its last (the higher of
    the highest applied and the info's ``last_seq``); every number in that range not applied is
    missing.
    """

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.seen = SeqSet()
        self.first_said: int | None = None  # unwrapped first_seq from the stream info
        self.last_said: int | None = None  # unwrapped last_seq from the stream info
        self.duplicates = 0
        self.late = 0  # applied after a higher number of the same stream
        self.recovered = 0  # applied from the back channel
        self.missing_since: dict[int, float] = {}  # unwrapped number -> when it may next be asked back (monotonic s)
        self.ask_cursor: int | None = None  # where :meth:`ranges_to_ask` goes on from (unwrapped number)
        # numbering incarnations (an edge that lost its code log starts at 0 again): wire number w of
        # the current one is unwrapped as (w + base) mod 2^32; ``starts`` / ``bases``: each incarnation's
        # first unwrapped number and its base, in order
        self.base = 0
        self.starts: list[int] = [-(1 << 62)]
        self.bases: list[int] = [0]
        self.tags: list[set[int]] = [set()]  # each incarnation's run tags (protocol.run_tag of its epochs)
        self.voids: list[tuple[int, int]] = []  # each restart's RESTART_SLACK numbers: never missing
        self.restarts = 0

    def _ref(self) -> int | None:
        return self.seen.high if self.seen.high is not None else self.last_said

    def _g(self, seq: int) -> int:
        return (int(seq) + self.base) & MASK

    def to_wire(self, u: int) -> int:
        """The wire number (uint32) of unwrapped number ``u``, in the incarnation that ``u`` belongs to."""
        return (u - self.bases[bisect.bisect_right(self.starts, u) - 1]) & MASK

    def current_start(self) -> int:
        """The first unwrapped number of the current incarnation (views before it cannot be asked back)."""
        return self.starts[-1]

    def restart(self, first_seq: int) -> bool:
        """An edge restarted under a new epoch with ``first_seq`` (wire): if that number was already used
        (at or below the highest number applied or announced), start a new incarnation whose
        ``first_seq`` comes right after it; returns True when it did.

        Views of the old incarnation that were announced and never came stay missing (``never came``):
        the edge that could have resent them has lost its log. The new incarnation starts
        :data:`RESTART_SLACK` numbers after the old one's highest, so that the old run's views still on
        the link are placed in the old run (by their run tag, :meth:`check`).
        """
        # a restart's first number counts as used even before any view of it came (a second restart
        # whose stream info comes before the first restarted run's views)
        hi = max((x for x in (self.seen.high, self.last_said, self.starts[-1] if self.restarts else None)
                  if x is not None), default=None)
        if hi is None:
            return False
        if self.seen.unwrap(self._g(first_seq), hi) > hi:
            return False  # the numbering continues (the edge kept its log): the same incarnation
        start = hi + 1 + RESTART_SLACK
        self.voids.append((hi + 1, start - 1))
        self.base = (start - int(first_seq)) & MASK
        self.starts.append(start)
        self.bases.append(start - int(first_seq))
        self.tags.append(set())
        self.restarts += 1
        self.missing_since.clear()  # the old incarnation's gaps cannot be asked back any more
        self.ask_cursor = None
        return True

    def note_tag(self, tag: int) -> None:
        """A run tag (``protocol.run_tag`` of a stream info's epoch) of the current incarnation: an edge that
        restarts but keeps its code log goes on in the same incarnation under a second tag."""
        if tag:
            self.tags[-1].add(tag)

    def incarnation_of(self, tag: int) -> int | None:
        """The incarnation (index, the newest that has it) whose stream infos had run tag ``tag``; the
        current one for ``tag`` 0 (a sender that does not say); None for a tag no stream info has had
        yet (its run's stream info is late or lost)."""
        if not tag:
            return len(self.starts) - 1
        for k in range(len(self.tags) - 1, -1, -1):
            if tag in self.tags[k]:
                return k
        return None

    def note_info(self, first_seq: int | None, last_seq: int | None) -> None:
        """Take the edge's ``first_seq`` / ``last_seq`` (wire values) from a stream info."""
        ref = self._ref()
        first_seq = None if first_seq is None else self._g(first_seq)
        last_seq = None if last_seq is None else self._g(last_seq)
        if first_seq is not None:
            u = self.seen.unwrap(first_seq, ref)
            if ref is None or abs(u - ref) <= MAX_SEQ_JUMP:
                self.first_said = u if self.first_said is None else min(self.first_said, u)
        if last_seq is not None:
            u = self.seen.unwrap(last_seq, ref if ref is not None else self.first_said)
            if ref is None or abs(u - ref) <= MAX_SEQ_JUMP:
                self.last_said = u if self.last_said is None else max(self.last_said, u)

    def check(self, seq: int, incarnation: int | None = None) -> tuple[str, int]:
        """Classify a wire ``seq`` before applying it.

        Args:
            seq: wire number (uint32). incarnation: the incarnation it belongs to (:meth:`incarnation_of`);
                None: the current one. A view of an earlier incarnation (it came after the edge's restart
                was seen) is placed among that incarnation's numbers, so it is neither lost nor mistaken
                for the new run's view of the same number.

        Returns:
            ``("new", u)``, ``("duplicate", u)`` or ``("bad_seq", u)`` (a jump beyond :data:`MAX_SEQ_JUMP`,
            or outside its earlier incarnation's numbers), with ``u`` the unwrapped number.
        """
        if incarnation is not None and incarnation < len(self.starts) - 1:
            lo, hi = self.starts[incarnation], self.starts[incarnation + 1] - 1
            if incarnation == 0:  # no start: as far behind the lowest number as the current one may be
                lo = min(x for x in (self.seen.low, self.first_said, hi) if x is not None) - MAX_SEQ_JUMP
            u = self.seen.unwrap((int(seq) + self.bases[incarnation]) & MASK, hi)
            if not lo <= u <= hi:
                return "bad_seq", u
            return ("duplicate" if u in self.seen else "new"), u
        ref = self._ref()
        u = self.seen.unwrap(self._g(seq), ref)
        if ref is not None:
            hi = max(x for x in (self.seen.high, self.last_said) if x is not None)
            lo = min(x for x in (self.seen.low, self.first_said, hi) if x is not None)
            if u > hi + MAX_SEQ_JUMP or u < lo - MAX_SEQ_JUMP:
                return "bad_seq", u
        if u in self.seen:
            return "duplicate", u
        return "new", u

    def apply(self, u: int, source: str = "link") -> bool:
        """Mark ``u`` applied; returns True if it came late (after a higher number, or from the back channel)."""
        late = self.seen.high is not None and u < self.seen.high
        self.seen.add(u)
        self.missing_since.pop(u, None)
        if source == "backchannel":
            self.recovered += 1
        if late:
            self.late += 1
        return late or source == "backchannel"

    def bounds(self) -> tuple[int, int] | None:
        """The expected range ``(lo, hi)`` (inclusive, unwrapped), or None before any number is known."""
        los = [x for x in (self.seen.low, self.first_said) if x is not None]
        his = [x for x in (self.seen.high, self.last_said) if x is not None]
        if not los or not his:
            return None
        return min(los), max(his)

    def _segments(self) -> list[tuple[int, int]]:
        """The expected range (:meth:`bounds`) without the numbers left free at restarts (``voids``)."""
        b = self.bounds()
        if b is None:
            return []
        out, lo = [], b[0]
        for a, z in self.voids:
            if a > lo:
                out.append((lo, min(a - 1, b[1])))
            lo = max(lo, z + 1)
        if lo <= b[1]:
            out.append((lo, b[1]))
        return [(a, z) for a, z in out if a <= z]

    def missing_count(self) -> int:
        """Views in the expected range that were never applied."""
        return sum(self.seen.missing_count(a, z) for a, z in self._segments())

    def missing_ranges(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Missing views as inclusive unwrapped ranges (at most ``limit``)."""
        out: list[tuple[int, int]] = []
        for a, z in self._segments():
            out += self.seen.missing_ranges(a, z, limit=None if limit is None else limit - len(out))
            if limit is not None and len(out) >= limit:
                break
        return out

    def ranges_to_ask(self, limit: int = 64) -> list[tuple[int, int]]:
        """Missing ranges of the current incarnation (the ones an edge can still resend), at most ``limit``
        a call, round-robin: each call goes on after the last range the previous call returned and wraps
        round to the incarnation's start, so that every gap is asked in turn and gaps the edge cannot
        answer (numbers rotated out of its log) never keep newer ones from being asked. O(``limit``)."""
        b = self.bounds()
        if b is None:
            return []
        lo, hi = max(b[0], self.current_start()), b[1]
        if hi < lo:
            return []
        cur = self.ask_cursor if self.ask_cursor is not None and lo <= self.ask_cursor <= hi else lo
        out = self.seen.missing_ranges(cur, hi, limit=limit)
        if len(out) < limit and cur > lo:
            out += self.seen.missing_ranges(lo, cur - 1, limit=limit - len(out))
        self.ask_cursor = out[-1][1] + 1 if len(out) >= limit else None
        return out
