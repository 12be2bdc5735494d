"""The task bloom filter (PROTOCOL.md section 4): vectors, layout and sizing."""

from __future__ import annotations

import random

import pytest
import xxhash

from node.wire.bloom import BloomFilter, BloomFilterError
from node.wire.identity import Identity
from tests.support.bloom_filters import bloom_bits, bloom_of
from tests.support.protocol_files import VECTORS


@pytest.mark.parametrize("vector", VECTORS["bloom_filter"], ids=lambda v: f"{len(v['hex']) // 2}B")
def test_bloom_vector(vector: dict) -> None:
    bloom = BloomFilter.from_hex(vector["hex"], vector["hashes"])
    assert bloom.hex == vector["hex"] and bloom.hashes == vector["hashes"]
    for item in vector["contains"]:
        assert bloom.contains(item.encode())
    for item in vector["not_contains"]:
        assert not bloom.contains(item.encode())


@pytest.mark.parametrize("vector", VECTORS["bloom_filter"], ids=lambda v: f"{len(v['hex']) // 2}B")
def test_adding_vector_items_reproduces_vector_bits(vector: dict) -> None:
    bits = bloom_bits(len(vector["hex"]) // 2, vector["hashes"], [item.encode() for item in vector["contains"]])
    assert bits.hex() == vector["hex"]  # the helper the other tests build filters with follows the vectors


def test_bit_layout_by_hand() -> None:
    """One hash: exactly bit h1 = xxh3_64(item, seed 0) mod m is set, LSB first in its byte."""
    bloom = BloomFilter(bloom_bits(16, 1, [b"item"]), 1)
    bit = xxhash.xxh3_64_intdigest(b"item", seed=0) % 128
    expected = bytearray(16)
    expected[bit >> 3] = 1 << (bit & 7)
    assert bloom.hex == expected.hex()


def test_build_selects_addresses_with_low_false_positive_rate() -> None:
    rng = random.Random(7)
    picked = [Identity.from_hex(f"{i + 1:064x}").address_bytes for i in range(50)]
    bloom = bloom_of(picked, false_positive_rate=0.01)
    assert all(bloom.contains(address) for address in picked)
    others = [rng.randbytes(20) for _ in range(5000)]
    false_positives = sum(bloom.contains(address) for address in others)
    assert false_positives < 5000 * 0.03
    parsed = BloomFilter.from_hex(bloom.hex, bloom.hashes)
    assert all(parsed.contains(address) for address in picked)


def test_build_empty_contains_nothing() -> None:
    bloom = bloom_of([])
    assert not bloom.contains(b"\x00" * 20)


@pytest.mark.parametrize(
    ("hex_str", "hashes", "match"),
    [
        ("", 7, "empty"),
        ("abc", 7, "odd"),
        ("zz", 7, "non-hex"),
        ("0 00", 7, "non-hex"),
        ("00\n", 7, "odd"),
        ("00", 0, "1..64"),
        ("00", 65, "1..64"),
        ("00", True, "integer"),
    ],
)
def test_from_hex_rejects(hex_str: str, hashes: int, match: str) -> None:
    with pytest.raises(BloomFilterError, match=match):
        BloomFilter.from_hex(hex_str, hashes)
