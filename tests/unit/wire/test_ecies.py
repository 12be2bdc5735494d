"""ECIES (PROTOCOL.md section 5): the library's defaults, round trips, the wire layout and failures."""

from __future__ import annotations

import ecies as eciespy
import pytest
from ecies.config import ECIES_CONFIG

from node.wire import ecies
from node.wire.identity import Identity


def test_eciespy_defaults_match_protocol() -> None:
    assert ECIES_CONFIG.elliptic_curve == "secp256k1"
    assert ECIES_CONFIG.is_ephemeral_key_compressed is False
    assert ECIES_CONFIG.is_hkdf_key_compressed is False
    assert ECIES_CONFIG.symmetric_algorithm == "aes-256-gcm"
    assert ECIES_CONFIG.symmetric_nonce_length == 16
    assert (ecies.CURVE, ecies.NONCE_BYTES, ecies.EPHEMERAL_KEY_BYTES) == (ECIES_CONFIG.elliptic_curve, 16, 65)


def test_ecies_round_trip_all_key_forms() -> None:
    receiver = Identity.generate()
    plaintext = "résultat: 42".encode()
    for key in (
        receiver.public_key_compressed,
        receiver.public_key_uncompressed,
        receiver.public_key_uncompressed[1:],
        receiver.public_key_compressed.hex(),
        "0x" + receiver.public_key_uncompressed.hex(),
    ):
        ciphertext = ecies.encrypt(key, plaintext)
        assert len(ciphertext) == ecies.OVERHEAD_BYTES + len(plaintext)
        assert ciphertext[0] == 0x04  # uncompressed ephemeral key first
        assert ecies.decrypt(receiver.secret, ciphertext) == plaintext
        assert eciespy.decrypt(receiver.secret, ciphertext) == plaintext  # library interop


def test_ecies_opens_what_eciespy_seals() -> None:
    """The other direction of interop: a box from eciespy (any publisher or node on the library) opens here."""
    receiver = Identity.generate()
    for plaintext in (b"", b"x", "résultat: 42".encode() * 100):
        box = eciespy.encrypt(receiver.public_key_compressed, plaintext)
        assert ecies.decrypt(receiver.secret, box) == plaintext
    box = eciespy.encrypt(receiver.public_key_compressed, b"moved")
    with pytest.raises(ecies.EciesError, match="tag"):
        ecies.decrypt(receiver.secret, box[:97] + bytes([box[97] ^ 1]) + box[98:])


def test_ecies_wire_layout_by_hand() -> None:
    """Rebuild the key from the layout in PROTOCOL.md section 5 and open the GCM box."""
    from coincurve import PublicKey
    from Crypto.Cipher import AES
    from Crypto.Hash import SHA256
    from Crypto.Protocol.KDF import HKDF

    receiver = Identity.generate()
    ciphertext = ecies.encrypt(receiver.public_key_compressed, b"layout")
    ephemeral, nonce, tag, box = (
        ciphertext[:65],
        ciphertext[65:81],
        ciphertext[81:97],
        ciphertext[97:],
    )
    shared = PublicKey(ephemeral).multiply(receiver.secret).format(compressed=False)
    key = HKDF(ephemeral + shared, 32, b"", SHA256)
    assert AES.new(key, AES.MODE_GCM, nonce).decrypt_and_verify(box, tag) == b"layout"


def test_ecies_wrong_key_and_garbage_fail() -> None:
    receiver, stranger = Identity.generate(), Identity.generate()
    ciphertext = ecies.encrypt(receiver.public_key_compressed, b"secret")
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(stranger.secret, ciphertext)
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(receiver.secret, tampered)
    with pytest.raises(ecies.EciesError, match="shorter"):
        ecies.decrypt(receiver.secret, b"\x04" * 10)
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(receiver.secret, b"\x07" * 120)  # not a curve point
    with pytest.raises(ecies.EciesError):
        ecies.encrypt("zz", b"x")
    with pytest.raises(ecies.EciesError):
        ecies.encrypt(b"\x02" + b"\xff" * 32, b"x")  # x not on the curve


def test_eciespy_ciphertexts_open_here() -> None:
    """The other direction of interop: what eciespy itself encrypts (any length) this module decrypts."""
    receiver = Identity.generate()
    for plaintext in (b"", b"x", "résultat".encode() * 500):
        ciphertext = eciespy.encrypt(receiver.public_key_uncompressed, plaintext)
        assert ecies.decrypt(receiver.secret, ciphertext) == plaintext
        assert eciespy.decrypt(receiver.secret, ecies.encrypt(receiver.public_key_compressed, plaintext)) == plaintext
