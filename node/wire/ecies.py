"""ECIES encryption of results to the publisher's key (the task's `publicKey`).

The wire format is `eciespy`'s default configuration (`WIRE_CONFIG`): 65-byte uncompressed
ephemeral secp256k1 key || 16-byte nonce || 16-byte tag || AES-256-GCM ciphertext; key =
HKDF-SHA256(ephemeral public key || uncompressed shared point), empty salt and info.
It is built here from coincurve (the ECDH point) and `cryptography` (HKDF, AES-GCM): the
same bytes as `ecies.encrypt`/`ecies.decrypt` at about a tenth of their cost, which every
result pays twice (the node encrypts, the publisher decrypts). `tests/unit/wire/test_ecies.py`
pins the format against eciespy in both directions.
"""

from __future__ import annotations

import os

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from ecies.config import Config

from node.wire.identity import IdentityError, parse_public_key

WIRE_CONFIG = Config()  # eciespy defaults: the format this module writes and reads
EPHEMERAL_KEY_BYTES = 65
NONCE_BYTES = 16
TAG_BYTES = 16
KEY_BYTES = 32
OVERHEAD_BYTES = EPHEMERAL_KEY_BYTES + NONCE_BYTES + TAG_BYTES


class EciesError(Exception):
    """A public key, secret key or ciphertext is not usable."""


def _session_key(ephemeral: bytes, peer: coincurve.PublicKey, secret: bytes) -> bytes:
    """HKDF-SHA256 over the ephemeral key and the uncompressed ECDH point (`secret` x `peer`)."""
    shared = peer.multiply(secret).format(compressed=False)
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=b"").derive(ephemeral + shared)


def encrypt(public_key: bytes | str, plaintext: bytes) -> bytes:
    """Encrypt `plaintext` to a secp256k1 public key given as bytes or hex (33/64/65 bytes)."""
    try:
        receiver = parse_public_key(public_key)
    except IdentityError as e:
        raise EciesError(str(e)) from e
    ephemeral_key = coincurve.PrivateKey()
    ephemeral = ephemeral_key.public_key.format(compressed=False)
    key = _session_key(ephemeral, receiver, ephemeral_key.secret)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, None)  # ciphertext || tag
    return ephemeral + nonce + sealed[-TAG_BYTES:] + sealed[:-TAG_BYTES]


def decrypt(secret: bytes, ciphertext: bytes) -> bytes:
    """Decrypt `ciphertext` with a 32-byte secret key; EciesError if it is not for this key."""
    if len(ciphertext) < OVERHEAD_BYTES:
        raise EciesError(f"ciphertext is {len(ciphertext)} bytes, shorter than the {OVERHEAD_BYTES}-byte header")
    ephemeral = ciphertext[:EPHEMERAL_KEY_BYTES]
    nonce = ciphertext[EPHEMERAL_KEY_BYTES : EPHEMERAL_KEY_BYTES + NONCE_BYTES]
    tag = ciphertext[EPHEMERAL_KEY_BYTES + NONCE_BYTES : OVERHEAD_BYTES]
    try:
        key = _session_key(ephemeral, coincurve.PublicKey(ephemeral), secret)
        return AESGCM(key).decrypt(nonce, ciphertext[OVERHEAD_BYTES:] + tag, None)
    except InvalidTag:
        raise EciesError("cannot decrypt: the tag does not match (another key, or altered)") from None
    except (ValueError, TypeError) as e:  # a bad secret, or an ephemeral key that is no curve point
        raise EciesError(f"cannot decrypt: {e}") from e
