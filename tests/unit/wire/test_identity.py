"""Identity (PROTOCOL.md section 1), key files and signatures."""

from __future__ import annotations

import hashlib
import os
import pathlib
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from node.wire.identity import (
    Identity,
    IdentityError,
    SignatureError,
    address_of,
    parse_public_key,
    recover_public_key,
)
from tests.support.protocol_files import VECTORS

IDENTITY = VECTORS["identity"]
DIGEST = hashlib.sha256(b"compute node").digest()


def test_identity_vector() -> None:
    identity = Identity.from_hex(IDENTITY["secret_hex"])
    assert identity.secret.hex() == IDENTITY["secret_hex"]
    assert identity.public_key_compressed.hex() == IDENTITY["public_key_compressed_hex"]
    assert identity.public_key_uncompressed.hex() == IDENTITY["public_key_uncompressed_hex"]
    assert identity.address == IDENTITY["address_hex"]
    assert identity.address_bytes == bytes.fromhex(IDENTITY["address_hex"])


@pytest.mark.parametrize("form", ["compressed", "uncompressed", "raw64"])
def test_address_of_every_public_key_form(form: str) -> None:
    uncompressed = bytes.fromhex(IDENTITY["public_key_uncompressed_hex"])
    key = {
        "compressed": bytes.fromhex(IDENTITY["public_key_compressed_hex"]),
        "uncompressed": uncompressed,
        "raw64": uncompressed[1:],
    }[form]
    assert address_of(key) == IDENTITY["address_hex"]


def test_address_of_rejects_bad_keys() -> None:
    with pytest.raises(IdentityError, match="33, 64 or 65"):
        address_of(b"\x02" * 20)
    with pytest.raises(IdentityError, match="valid secp256k1"):
        address_of(b"\x05" + b"\x01" * 32)


def test_a_public_key_in_hex_is_hex_digits_only_and_65_bytes_means_04() -> None:
    compressed = IDENTITY["public_key_compressed_hex"]
    uncompressed = bytes.fromhex(IDENTITY["public_key_uncompressed_hex"])
    for good in (compressed, "0x" + compressed, "0X" + compressed.upper(), uncompressed.hex()):
        assert address_of(parse_public_key(good).format()) == IDENTITY["address_hex"]
    hybrid = bytes([6 + uncompressed[-1] % 2]) + uncompressed[1:]  # SEC1's hybrid form: libsecp256k1 parses it
    for bad in (compressed[:10] + " " + compressed[10:], compressed + "\n" * 1000, "\t" + compressed, hybrid.hex()):
        with pytest.raises(IdentityError):
            parse_public_key(bad)


def test_from_hex_accepts_0x_and_rejects_garbage() -> None:
    assert Identity.from_hex("0x" + IDENTITY["secret_hex"]).address == IDENTITY["address_hex"]
    for bad in ["", "abc", "zz" * 32, "00" * 32, "ff" * 32, IDENTITY["secret_hex"] + "00"]:
        with pytest.raises(IdentityError):
            Identity.from_hex(bad)


def test_peer_id_is_libp2p_id_of_same_key() -> None:
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.peer.id import ID

    identity = Identity.from_hex(IDENTITY["secret_hex"])
    assert identity.peer_id.startswith("16Uiu2")
    pair = create_new_key_pair(identity.secret)
    assert pair.public_key.to_bytes() == identity.public_key_compressed
    assert ID.from_pubkey(pair.public_key).to_base58() == identity.peer_id
    assert identity.peer_id == "16Uiu2HAkv2YwW8JTC1mvuXZoh2S3zMfPWnXbqQWwjQ9o6z6B1zbZ"


def test_repr_hides_secret() -> None:
    identity = Identity.from_hex(IDENTITY["secret_hex"])
    assert IDENTITY["secret_hex"] not in repr(identity)
    assert identity.address in repr(identity)


def test_sign_and_recover() -> None:
    identity = Identity.generate()
    signature, recovery_id = identity.sign(DIGEST)
    assert len(signature) == 64 and recovery_id in (0, 1)
    assert address_of(recover_public_key(DIGEST, signature, recovery_id)) == identity.address


def test_signature_by_another_key_recovers_another_address() -> None:
    me, other = Identity.generate(), Identity.generate()
    signature, recovery_id = other.sign(DIGEST)
    assert address_of(recover_public_key(DIGEST, signature, recovery_id)) == other.address != me.address


def test_recover_rejects_malformed_signatures() -> None:
    signature, recovery_id = Identity.generate().sign(DIGEST)
    with pytest.raises(SignatureError, match="recovery id"):
        recover_public_key(DIGEST, signature, 2)
    with pytest.raises(SignatureError, match="64 bytes"):
        recover_public_key(DIGEST, signature[:63], recovery_id)
    with pytest.raises(SignatureError, match="32 bytes"):
        recover_public_key(DIGEST[:31], signature, recovery_id)
    with pytest.raises(SignatureError, match="does not recover"):
        recover_public_key(DIGEST, bytes(64), 0)
    with pytest.raises(SignatureError):
        Identity.generate().sign(b"short")


def test_key_file_created_0600_and_reused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "deep" / "dir" / "node.key"
    created = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0  # the folder it made (a data dir): owner-only
    assert path.read_text().strip() == created.secret.hex()
    assert Identity.load_or_create(path) == created
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temp file left


def test_concurrent_creators_agree_on_one_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "node.key"
    with ThreadPoolExecutor(max_workers=8) as pool:
        identities = list(pool.map(lambda _: Identity.load_or_create(path), range(16)))
    assert len({identity.address for identity in identities}) == 1
    assert Identity.load_or_create(path) == identities[0]


def test_save_replaces_atomically_with_0600(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("old")
    os.chmod(path, 0o644)
    identity = Identity.generate()
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load_or_create(path) == identity


@pytest.mark.parametrize("content", [b"", b"not a key\n", b"\xff\xfe" * 32, b"00" * 31])
def test_corrupt_key_file_is_an_error_and_kept(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=str(path)):
        Identity.load_or_create(path)
    assert path.read_bytes() == content  # never silently replaced
