"""ECIES encryption of results to the publisher's key (the task's `publicKey`).

A thin wrapper on `eciespy` with its default configuration, which is the wire
format: 65-byte uncompressed ephemeral secp256k1 key || 16-byte nonce ||
16-byte tag || AES-256-GCM ciphertext; key = HKDF-SHA256(ephemeral public key ||
uncompressed shared point). `tests/unit/wire/test_ecies.py` pins these defaults.
"""

from __future__ import annotations

import ecies
from ecies.config import Config

from node.wire.identity import IdentityError, parse_public_key

WIRE_CONFIG = Config()  # eciespy defaults; a private copy so no one can mutate ECIES_CONFIG under us
EPHEMERAL_KEY_BYTES = 65
NONCE_BYTES = 16
TAG_BYTES = 16
OVERHEAD_BYTES = EPHEMERAL_KEY_BYTES + NONCE_BYTES + TAG_BYTES


class EciesError(Exception):
    """A public key, secret key or ciphertext is not usable."""


def _public_key_bytes(public_key: bytes | str) -> bytes:
    try:
        return parse_public_key(public_key).format(compressed=False)
    except IdentityError as e:
        raise EciesError(str(e)) from e


def encrypt(public_key: bytes | str, plaintext: bytes) -> bytes:
    """Encrypt `plaintext` to a secp256k1 public key given as bytes or hex (33/64/65 bytes)."""
    key = _public_key_bytes(public_key)
    try:
        return ecies.encrypt(key, plaintext, config=WIRE_CONFIG)
    except (ValueError, TypeError) as e:
        raise EciesError(f"cannot encrypt to this public key: {e}") from e


def decrypt(secret: bytes, ciphertext: bytes) -> bytes:
    """Decrypt `ciphertext` with a 32-byte secret key; EciesError if it is not for this key."""
    if len(ciphertext) < OVERHEAD_BYTES:
        raise EciesError(f"ciphertext is {len(ciphertext)} bytes, shorter than the {OVERHEAD_BYTES}-byte header")
    try:
        return ecies.decrypt(secret, ciphertext, config=WIRE_CONFIG)
    except (ValueError, TypeError) as e:  # bad key, bad point, or failed GCM tag check
        raise EciesError(f"cannot decrypt: {e}") from e
