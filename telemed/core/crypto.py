"""Field-level protection of personal identifiers (GB/T 39786 level 3; PIPL Art. 51).

Resident ID numbers and phone numbers are encrypted per field with SM4-GCM, the national block cipher in an
authenticated mode. The ciphertext carries its key version (``v2:...``) so keys can rotate while old rows stay
readable, and it is bound to its table, column and row as associated data, so a ciphertext copied into another
row does not decrypt. Lookups use a blind index: a keyed SM3 HMAC of the normalised value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from telemed.core.config import Settings

NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16


class CryptoError(RuntimeError):
    """A value could not be decrypted: wrong key, tampered ciphertext or a ciphertext moved to another row."""


def sm3_hmac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, "sm3").hexdigest()


def sm3_hex(message: bytes) -> str:
    return hashlib.new("sm3", message).hexdigest()


def derive_key(secret: bytes, label: str, length: int = 16) -> bytes:
    return HKDF(algorithm=hashes.SM3(), length=length, salt=None, info=label.encode()).derive(secret)


class FieldCipher:
    """SM4-GCM with versioned keys and row-bound associated data."""

    def __init__(self, keys: Mapping[int, bytes], current_version: int, blind_index_key: bytes) -> None:
        if current_version not in keys:
            raise ValueError(f"no field key for version {current_version}")
        if any(len(k) != 16 for k in keys.values()):
            raise ValueError("SM4 keys are 16 bytes")
        self._keys = dict(keys)
        self.current_version = current_version
        self._blind_index_key = blind_index_key

    @classmethod
    def from_settings(cls, settings: Settings) -> FieldCipher:
        secret = settings.secret_key.get_secret_value().encode()
        keys: dict[int, bytes] = {}
        if settings.field_keys is not None:
            for pair in settings.field_keys.get_secret_value().split(","):
                label, _, encoded = pair.strip().partition(":")
                keys[int(label)] = base64.b64decode(encoded)
        else:
            # Development: derive a key per version from the secret, so rotation can be exercised locally.
            for version in range(1, settings.field_key_version + 1):
                keys[version] = derive_key(secret, f"telemed field key v{version}")
        return cls(keys, settings.field_key_version, derive_key(secret, "telemed blind index", 32))

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self._keys)

    @staticmethod
    def _aad(table: str, column: str, row_id: str) -> bytes:
        return f"{table}|{column}|{row_id}".encode()

    def encrypt(self, plaintext: str, *, table: str, column: str, row_id: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        encryptor = Cipher(algorithms.SM4(self._keys[self.current_version]), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(self._aad(table, column, row_id))
        body = encryptor.update(plaintext.encode()) + encryptor.finalize()
        token = base64.urlsafe_b64encode(nonce + body + encryptor.tag).decode()
        return f"v{self.current_version}:{token}"

    @staticmethod
    def version_of(ciphertext: str) -> int:
        prefix, _, _ = ciphertext.partition(":")
        if not prefix.startswith("v") or not prefix[1:].isdigit():
            raise CryptoError("not a versioned ciphertext")
        return int(prefix[1:])

    def decrypt(self, ciphertext: str, *, table: str, column: str, row_id: str) -> str:
        version = self.version_of(ciphertext)
        key = self._keys.get(version)
        if key is None:
            raise CryptoError(f"field key version {version} is not loaded")
        raw = base64.urlsafe_b64decode(ciphertext.partition(":")[2])
        nonce, body, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:-TAG_BYTES], raw[-TAG_BYTES:]
        decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(self._aad(table, column, row_id))
        try:
            return (decryptor.update(body) + decryptor.finalize()).decode()
        except InvalidTag:
            raise CryptoError("ciphertext does not authenticate") from None

    def blind_index(self, normalized: str, *, purpose: str) -> str:
        """A keyed SM3 digest for equality lookup; ``purpose`` keeps indexes of different fields apart."""
        return sm3_hmac(self._blind_index_key, f"{purpose}|{normalized}".encode())
