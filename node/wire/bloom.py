"""The task bloom filter that selects nodes by their raw 20-byte address.

m = 8 * len(bytes) bits, k = hashes; h1 = xxh3_64(item, seed 0) mod m,
h2 = xxh3_64(item, seed 32) mod m; the item's bits are (h1 + i*h2) mod m for
i = 0..k-1; bit b lives at bytes[b >> 3] >> (b & 7) & 1.
"""

from __future__ import annotations

import re

import xxhash

MIN_HASHES = 1
MAX_HASHES = 64
SEED_1 = 0
SEED_2 = 32
_HEX = re.compile(r"[0-9a-fA-F]+")


class BloomFilterError(Exception):
    """A bloom filter's hex or hash count is malformed."""


class BloomFilter:
    """A bloom filter with the wire's bit layout and double hashing."""

    def __init__(self, bits: bytes | bytearray, hashes: int) -> None:
        if not bits:
            raise BloomFilterError("bloom filter has no bytes")
        if isinstance(hashes, bool) or not isinstance(hashes, int):
            raise BloomFilterError(f"bloom filter hashes must be an integer, got {hashes!r}")
        if not MIN_HASHES <= hashes <= MAX_HASHES:
            raise BloomFilterError(f"bloom filter hashes must be {MIN_HASHES}..{MAX_HASHES}, got {hashes}")
        self._bits = bytearray(bits)
        self.hashes = hashes

    def __repr__(self) -> str:
        return f"BloomFilter(bytes={len(self._bits)}, hashes={self.hashes})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BloomFilter) and other._bits == self._bits and other.hashes == self.hashes

    @classmethod
    def from_hex(cls, hex_str: str, hashes: int) -> BloomFilter:
        """Parse the wire form: non-empty, even-length hex and 1..64 hashes."""
        if not isinstance(hex_str, str) or not hex_str:
            raise BloomFilterError("bloom filter hex is empty")
        if len(hex_str) % 2:
            raise BloomFilterError(f"bloom filter hex has odd length {len(hex_str)}")
        if not _HEX.fullmatch(hex_str):  # also refuses the whitespace bytes.fromhex skips
            raise BloomFilterError("bloom filter hex contains non-hex characters")
        return cls(bytes.fromhex(hex_str), hashes)

    @property
    def hex(self) -> str:
        """The wire form of the bits."""
        return self._bits.hex()

    def _positions(self, item: bytes) -> list[int]:
        m = len(self._bits) * 8
        h1 = xxhash.xxh3_64_intdigest(item, seed=SEED_1) % m
        h2 = xxhash.xxh3_64_intdigest(item, seed=SEED_2) % m
        return [(h1 + i * h2) % m for i in range(self.hashes)]

    def contains(self, item: bytes) -> bool:
        """True if `item` may be in the filter (false positives possible, no false negatives)."""
        return all(self._bits[b >> 3] >> (b & 7) & 1 for b in self._positions(item))
