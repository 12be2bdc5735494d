"""Bloom filters as a publisher builds them (the node only reads them): PROTOCOL.md section 4's layout.

bits m = 8 * bytes, k hashes; h1 = xxh3_64(item, seed 0) mod m, h2 = xxh3_64(item, seed 32) mod m;
the item's bits are (h1 + i*h2) mod m, i < k; bit b is bytes[b >> 3] >> (b & 7) & 1.
"""

from __future__ import annotations

import math

import xxhash

from node.wire.bloom import MAX_HASHES, MIN_HASHES, SEED_1, SEED_2, BloomFilter


def bloom_bits(size: int, hashes: int, items: list[bytes]) -> bytes:
    """`size` bytes with the bits of `items` set."""
    bits, m = bytearray(size), size * 8
    for item in items:
        h1 = xxhash.xxh3_64_intdigest(item, seed=SEED_1) % m
        h2 = xxhash.xxh3_64_intdigest(item, seed=SEED_2) % m
        for i in range(hashes):
            b = (h1 + i * h2) % m
            bits[b >> 3] |= 1 << (b & 7)
    return bytes(bits)


def bloom_of(items: list[bytes], false_positive_rate: float = 0.01) -> BloomFilter:
    """A filter sized for `items` at about `false_positive_rate`, with them in it."""
    n = max(len(items), 1)
    size = max(1, math.ceil(-n * math.log(false_positive_rate) / (math.log(2) ** 2) / 8))
    hashes = min(MAX_HASHES, max(MIN_HASHES, round(size * 8 / n * math.log(2))))
    return BloomFilter(bloom_bits(size, hashes, items), hashes)
