"""The forwarder's check that the core holds our data set byte for byte, without
reading the data set again: CRC-32 arithmetic against zlib itself."""

from __future__ import annotations

import random
import zlib

import pytest

from netpacs.domain import crc32


@pytest.mark.parametrize("length", [0, 1, 7, 128, 4097, 524_288 + 331])
def test_a_crc_moved_past_a_tail_is_zlibs_crc_of_head_and_tail(length: int) -> None:
    rng = random.Random(length)
    head, tail = rng.randbytes(300), rng.randbytes(length)
    assert crc32.shift(zlib.crc32(head), length) ^ zlib.crc32(tail) == zlib.crc32(head + tail)


def test_the_crc_with_another_head_is_that_of_the_other_head_and_the_same_tail() -> None:
    rng = random.Random(13)
    ours, theirs, tail = rng.randbytes(412), rng.randbytes(388), rng.randbytes(100_003)
    expected = crc32.with_head(
        zlib.crc32(ours + tail), zlib.crc32(ours), zlib.crc32(theirs), len(tail)
    )
    assert expected == zlib.crc32(theirs + tail)
    # One byte of the tail different at the core: the CRCs differ.
    changed = tail[:500] + bytes([tail[500] ^ 1]) + tail[501:]
    assert expected != zlib.crc32(theirs + changed)
