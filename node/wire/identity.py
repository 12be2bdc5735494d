"""The node's secp256k1 identity: one key for wallet address, peer id and signatures.

The address is Ethereum style (last 20 bytes of keccak256 of the uncompressed
public key without its 0x04 prefix); the peer id is the libp2p id of the same key.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import tempfile

import coincurve
import structlog
from Crypto.Hash import keccak

log = structlog.get_logger(__name__)

SECRET_BYTES = 32
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64
KEY_FILE_MODE = 0o600
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_ORDER = CURVE_ORDER // 2
_HEX = re.compile(r"[0-9a-fA-F]+")


class IdentityError(Exception):
    """A secret key or public key is malformed, or a key file cannot be used."""


class SignatureError(Exception):
    """A signature is malformed or does not recover a public key."""


def parse_public_key(public_key: bytes | str) -> coincurve.PublicKey:
    """A 33 (compressed), 65 (uncompressed) or 64 (raw x||y) byte public key, as bytes or hex
    (optional 0x); IdentityError says what is wrong."""
    if isinstance(public_key, str):
        digits = public_key.removeprefix("0x").removeprefix("0X")
        if not _HEX.fullmatch(digits):  # bytes.fromhex would skip whitespace anywhere
            raise IdentityError("public key is not hex")
        public_key = bytes.fromhex(digits)
    if len(public_key) == 64:
        public_key = b"\x04" + public_key
    if len(public_key) not in (33, 65):
        raise IdentityError(f"public key must be 33, 64 or 65 bytes, got {len(public_key)}")
    if len(public_key) == 65 and public_key[0] != 4:  # libsecp256k1 also reads the hybrid 06/07 form
        raise IdentityError("a 65-byte public key must start with 04")
    try:
        return coincurve.PublicKey(public_key)
    except ValueError as e:
        raise IdentityError(f"not a valid secp256k1 public key: {e}") from e


@functools.lru_cache(maxsize=4096)
def address_of(public_key: bytes) -> str:
    """The 40-hex-character address of a 33/64/65-byte public key (cached: every message of a
    signer recovers the same key)."""
    uncompressed = parse_public_key(public_key).format(compressed=False)
    return keccak.new(digest_bits=256, data=uncompressed[1:]).digest()[-20:].hex()


def recover_public_key(digest: bytes, signature: bytes, recovery_id: int) -> bytes:
    """The compressed public key that made `signature` (r||s) with `recovery_id` over `digest`.

    Only low-s signatures count: (r, n - s) with the other recovery id is the same
    signature, and gossip message ids are hashes of the data, so accepting both
    would let anyone re-send a message under a new id.
    """
    if len(digest) != DIGEST_BYTES:
        raise SignatureError(f"digest must be {DIGEST_BYTES} bytes, got {len(digest)}")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    if recovery_id not in (0, 1):
        raise SignatureError(f"recovery id must be 0 or 1, got {recovery_id!r}")
    if int.from_bytes(signature[32:], "big") > HALF_ORDER:
        raise SignatureError("signature has a high s (not canonical); sign with low s")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            signature + bytes([recovery_id]), digest, hasher=None
        )
    except (ValueError, TypeError) as e:
        raise SignatureError(f"signature does not recover a public key: {e}") from e
    return public_key.format(compressed=True)


@functools.lru_cache(maxsize=4096)
def peer_id_of_public_key(public_key: bytes) -> str:
    """The libp2p peer id (`16Uiu2...`) of a 33/64/65-byte secp256k1 public key."""
    # libp2p is slow to import; it is loaded only when a peer id is needed.
    from libp2p.crypto.secp256k1 import Secp256k1PublicKey
    from libp2p.peer.id import ID

    compressed = parse_public_key(public_key).format(compressed=True)
    return ID.from_pubkey(Secp256k1PublicKey.from_bytes(compressed)).to_base58()


def warn_if_shared(path: pathlib.Path) -> None:
    """Log a warning when the key file at `path` is readable by other users (it should be 0600)."""
    try:
        shared = path.stat().st_mode & 0o077
    except OSError:  # gone, or a pipe already read
        return
    if shared:
        log.warning("key file readable by others", path=str(path))


class Identity:
    """A secp256k1 secret key and everything derived from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise IdentityError(f"secret key must be {SECRET_BYTES} bytes, got {len(secret)}")
        try:
            self._key = coincurve.PrivateKey(secret)
        except ValueError as e:  # zero or >= the group order
            raise IdentityError(f"secret key is not a valid secp256k1 scalar: {e}") from e
        self.secret: bytes = secret
        self.public_key_compressed: bytes = self._key.public_key.format(compressed=True)
        self.public_key_uncompressed: bytes = self._key.public_key.format(compressed=False)
        self.address: str = address_of(self.public_key_uncompressed)
        self.address_bytes: bytes = bytes.fromhex(self.address)

    def __repr__(self) -> str:  # never print the secret
        return f"Identity(address={self.address})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.secret == self.secret

    def __hash__(self) -> int:
        return hash(self.address)

    @classmethod
    def from_hex(cls, secret_hex: str) -> Identity:
        """Identity from 64 hex characters, with or without a leading `0x`."""
        text = secret_hex.strip()
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        if len(text) != 2 * SECRET_BYTES:
            raise IdentityError(f"secret key must be {2 * SECRET_BYTES} hex characters, got {len(text)}")
        try:
            secret = bytes.fromhex(text)
        except ValueError as e:
            raise IdentityError("secret key is not hex") from e
        return cls(secret)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def load(cls, path: pathlib.Path) -> Identity:
        """Read a key file written by `save`; IdentityError naming the path otherwise."""
        path = pathlib.Path(path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise IdentityError(f"cannot read key file {path}: {e}") from e
        try:
            return cls.from_hex(text)
        except IdentityError as e:
            raise IdentityError(f"corrupt key file {path}: {e}") from e

    @classmethod
    def load_or_create(cls, path: pathlib.Path) -> Identity:
        """Load the key at `path`, or create it once (mode 0600) and return it.

        An existing file is never replaced, even when it is corrupt.
        """
        path = pathlib.Path(path)
        if path.exists():
            identity = cls.load(path)
            warn_if_shared(path)
            return identity
        identity = cls.generate()
        if not identity._write(path, replace=False):  # another process created it first
            return cls.load(path)
        log.info("created key", path=str(path), address=identity.address)  # a node's, a gateway's or a publisher's
        return identity

    @classmethod
    def from_secret_or_file(cls, secret_key: str | None, path: pathlib.Path) -> Identity:
        """The configured key: `secret_key` (hex) when set, else the key file at `path` (created once)."""
        return cls.from_hex(secret_key) if secret_key else cls.load_or_create(path)

    def save(self, path: pathlib.Path) -> None:
        """Write the secret as hex to `path` atomically, mode 0600 (replacing any file)."""
        self._write(pathlib.Path(path), replace=True)

    def _write(self, path: pathlib.Path, *, replace: bool) -> bool:
        """Write atomically via a temporary file; False if `path` exists and not `replace`."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a data dir: the node's own mode
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as e:
            raise IdentityError(f"cannot create key file {path}: {e}") from e
        tmp = pathlib.Path(tmp_name)
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(self.secret.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # fails if path exists: never overwrite a key
            except FileExistsError:
                return False
            return True
        except OSError as e:
            raise IdentityError(f"cannot write key file {path}: {e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    @property
    def peer_id(self) -> str:
        """The libp2p peer id (`16Uiu2...`) of this key."""
        return peer_id_of_public_key(self.public_key_compressed)

    def sign(self, digest: bytes) -> tuple[bytes, int]:
        """Recoverable ECDSA over a 32-byte digest (not hashed again): (r||s, recovery id)."""
        if len(digest) != DIGEST_BYTES:
            raise SignatureError(f"digest must be {DIGEST_BYTES} bytes, got {len(digest)}")
        signature = self._key.sign_recoverable(digest, hasher=None)
        return signature[:SIGNATURE_BYTES], signature[SIGNATURE_BYTES]
