"""CRC-32 arithmetic (zlib's polynomial): moving a CRC past ``n`` bytes without them.

zlib's ``crc32(a + b) == shift(crc32(a), len(b)) ^ crc32(b)``, and ``shift`` is linear
(zlib's ``crc32_combine``). So when two objects share a tail ``b`` after different
heads ``a1`` and ``a2``::

    crc32(a2 + b) == crc32(a1 + b) ^ shift(crc32(a1) ^ crc32(a2), len(b))

which lets the edge tell what CRC-32 the core must have recorded for an object made of
the core's file meta and the edge's data set, from the CRC-32 the edge recorded when it
stored the object, without reading the data set again (services.edge.forward).
"""

from __future__ import annotations

import functools

_POLY = 0xEDB88320  # zlib's, reflected


def _times(matrix: tuple[int, ...], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_times(matrix, matrix[n]) for n in range(32))


@functools.cache
def _zeros(power: int) -> tuple[int, ...]:
    """The operator that appends ``2**power`` zero bytes to a CRC register."""
    if power == 0:
        one_bit = (_POLY, *(1 << n for n in range(31)))
        two = _square(one_bit)
        four = _square(two)
        return _square(four)  # eight bits: one byte
    return _square(_zeros(power - 1))


def shift(crc: int, length: int) -> int:
    """``crc`` moved past ``length`` zero bytes: ``crc32(a + b) ^ crc32(b)`` for
    ``crc == crc32(a)`` and ``len(b) == length``."""
    if length < 0:
        raise ValueError("a length is not negative")
    power = 0
    while length:
        if length & 1:
            crc = _times(_zeros(power), crc)
        length >>= 1
        power += 1
    return crc


def with_head(crc: int, head: int, other_head: int, tail_length: int) -> int:
    """The CRC-32 of ``other_head + tail`` from ``crc == crc32(head + tail)``,
    ``head == crc32(head)`` and ``other_head == crc32(other head)`` (module doc)."""
    return crc ^ shift(head ^ other_head, tail_length)
