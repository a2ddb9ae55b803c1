"""The keys a bulk run has seen, in bounded memory: duplicates in the input.

A message's key is its ``id`` (or, with a journal, a hash of the message).
Two messages with one key cannot be told apart by a journal, so a run
reports the second as a `DuplicateMessage` instead of sending it or taking
the first one's outcome for it.  The input is streamed: the check is made as
each message is read.

`SeenKeys` keeps, per key, an 8-byte hash (Python's 64-bit string hash) and
the 4-byte index of the message that had it first, in two arrays with open
addressing: 12 bytes a slot, at most 24 bytes a message at its fullest after
a growth (2**21 slots, 25 MB, for a million messages), where a Python
``set`` of the keys would cost the keys themselves (~80 bytes each) plus
the set.  A hit is a candidate: `bulk` confirms it exactly when it can (the
first message still in flight, or the journal's record of this run) and
otherwise takes it as a duplicate; two different keys share a 64-bit hash
with a probability of about n²/2⁶⁵ in a run of n messages (3·10⁻⁸ for a
million).
"""
from __future__ import annotations

from array import array

__all__ = ["SeenKeys"]

_EMPTY = 0
_NO_INDEX = 0xFFFFFFFF


class SeenKeys:
    """Hashes of the keys seen so far, each with the index it was first seen at."""

    __slots__ = ("_hashes", "_firsts", "_mask", "_count")

    def __init__(self, size: int = 1024) -> None:
        size = max(8, 1 << (size - 1).bit_length())
        self._hashes = array("q", bytes(8 * size))
        self._firsts = array("I", bytes(4 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def nbytes(self) -> int:
        """Memory held by the table (its two arrays)."""
        return len(self._hashes) * 8 + len(self._firsts) * 4

    def add(self, key: str, index: int) -> int | None:
        """Records ``key`` seen at ``index``; returns the index it was seen at
        first when its hash was seen before (a candidate duplicate), else None."""
        h = hash(key) or 1
        hashes, mask = self._hashes, self._mask
        slot = h & mask
        while True:
            v = hashes[slot]
            if v == _EMPTY:
                break
            if v == h:
                first = self._firsts[slot]
                return None if first == _NO_INDEX else first
            slot = (slot + 1) & mask
        hashes[slot] = h
        self._firsts[slot] = index if 0 <= index < _NO_INDEX else _NO_INDEX
        self._count += 1
        if self._count * 4 > (mask + 1) * 3:      # at most 3/4 full
            self._grow()
        return None

    def add_many(self, keys: list[str], indexes: list[int]) -> list[tuple[int, int]]:
        """`add` for many keys: the candidates as (position in ``keys``, index
        seen at first)."""
        hits: list[tuple[int, int]] = []
        if (self._count + len(keys)) * 4 > (self._mask + 1) * 3:
            for pos, (key, index) in enumerate(zip(keys, indexes)):
                first = self.add(key, index)
                if first is not None:
                    hits.append((pos, first))
            return hits
        hashes, firsts, mask = self._hashes, self._firsts, self._mask
        added = 0
        for pos, key in enumerate(keys):
            h = hash(key) or 1
            slot = h & mask
            v = hashes[slot]
            while v != _EMPTY and v != h:
                slot = (slot + 1) & mask
                v = hashes[slot]
            if v == h:
                first = firsts[slot]
                if first != _NO_INDEX:
                    hits.append((pos, first))
                continue
            hashes[slot] = h
            index = indexes[pos]
            firsts[slot] = index if 0 <= index < _NO_INDEX else _NO_INDEX
            added += 1
        self._count += added
        return hits

    def _grow(self) -> None:
        old_h, old_f = self._hashes, self._firsts
        size = len(old_h) * 2
        hashes = array("q", bytes(8 * size))
        firsts = array("I", bytes(4 * size))
        mask = size - 1
        for h, f in zip(old_h, old_f):
            if h == _EMPTY:
                continue
            slot = h & mask
            while hashes[slot] != _EMPTY:
                slot = (slot + 1) & mask
            hashes[slot] = h
            firsts[slot] = f
        self._hashes, self._firsts, self._mask = hashes, firsts, mask
