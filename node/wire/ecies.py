"""ECIES encryption of results to the publisher's key (the task's `publicKey`).

The wire format is `eciespy`'s default configuration: 65-byte uncompressed
ephemeral secp256k1 key || 16-byte nonce || 16-byte tag || AES-256-GCM
ciphertext; key = HKDF-SHA256(ephemeral public key || uncompressed shared point).
`tests/unit/wire/test_ecies.py` pins these defaults and checks both directions
against `eciespy` itself. The same steps are done here with coincurve (the
points) and `cryptography` (HKDF, AES-GCM), whose C code takes ~0.1 ms a
result where eciespy's pycryptodome objects took ~0.25 ms: once per task on the
node and once per result on the publisher.
"""

from __future__ import annotations

import os

import coincurve
from coincurve.utils import get_valid_secret
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.wire.identity import IdentityError, parse_public_key

CURVE = "secp256k1"  # with the sizes below: what eciespy's default configuration writes and reads
EPHEMERAL_KEY_BYTES = 65
NONCE_BYTES = 16
TAG_BYTES = 16
OVERHEAD_BYTES = EPHEMERAL_KEY_BYTES + NONCE_BYTES + TAG_BYTES


class EciesError(Exception):
    """A public key, secret key or ciphertext is not usable."""


def _public_key(public_key: bytes | str) -> coincurve.PublicKey:
    try:
        return parse_public_key(public_key)
    except IdentityError as e:
        raise EciesError(str(e)) from e


def _symmetric_key(ephemeral: bytes, shared_point: bytes) -> bytes:
    """HKDF-SHA256, no salt, no info, 32 bytes, over ephemeral public key || shared point (both uncompressed)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=None).derive(ephemeral + shared_point)


def encrypt(public_key: bytes | str, plaintext: bytes) -> bytes:
    """Encrypt `plaintext` to a secp256k1 public key given as bytes or hex (33/64/65 bytes)."""
    receiver = _public_key(public_key)
    try:
        # Not coincurve.PrivateKey(): it also derives an x-only key, a second point multiplication unused here.
        ephemeral_secret = get_valid_secret()
        ephemeral = coincurve.PublicKey.from_valid_secret(ephemeral_secret).format(compressed=False)
        shared = receiver.multiply(ephemeral_secret).format(compressed=False)
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(_symmetric_key(ephemeral, shared)).encrypt(nonce, bytes(plaintext), None)
    except (ValueError, TypeError) as e:
        raise EciesError(f"cannot encrypt to this public key: {e}") from e
    box, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
    return ephemeral + nonce + tag + box


def decrypt(secret: bytes, ciphertext: bytes) -> bytes:
    """Decrypt `ciphertext` with a 32-byte secret key; EciesError if it is not for this key."""
    if len(ciphertext) < OVERHEAD_BYTES:
        raise EciesError(f"ciphertext is {len(ciphertext)} bytes, shorter than the {OVERHEAD_BYTES}-byte header")
    ephemeral = ciphertext[:EPHEMERAL_KEY_BYTES]
    nonce = ciphertext[EPHEMERAL_KEY_BYTES : EPHEMERAL_KEY_BYTES + NONCE_BYTES]
    tag = ciphertext[EPHEMERAL_KEY_BYTES + NONCE_BYTES : OVERHEAD_BYTES]
    box = ciphertext[OVERHEAD_BYTES:]
    try:
        shared = coincurve.PublicKey(ephemeral).multiply(secret).format(compressed=False)
        return AESGCM(_symmetric_key(ephemeral, shared)).decrypt(nonce, box + tag, None)
    except InvalidTag as e:
        raise EciesError("cannot decrypt: the tag does not match (not for this key, or altered)") from e
    except (ValueError, TypeError) as e:  # bad key, bad point
        raise EciesError(f"cannot decrypt: {e}") from e
