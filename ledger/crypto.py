"""Envelope encryption of personal data: a data key per customer, wrapped by a master key.

Pure functions over bytes (AES-256-GCM from `cryptography`); where keys live is the
persistence layer's business. Every ciphertext is bound to its customer by associated data,
so a sealed value copied onto another customer's event does not open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
from functools import lru_cache
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


class SealError(Exception):
    """A sealed value does not open with the key given (wrong key or altered bytes)."""


# Keys and nonces are cut from a few KiB of `os.urandom` at a time, not a call each. Each
# `os.urandom` gives up Python's GIL for its system call, and taking it back waits for
# whichever thread took it meanwhile: during an import, the thread inserting the previous
# chunk (`ledger/persistence/background.py`). Three such calls per new customer (its key,
# the key's wrapping, its sealed details) cost a 100k import ~4 % of its time (in-process,
# alternated with the code before; README, Performance). The bytes are the kernel's, each handed
# out once: the pool is per thread (no two threads can take the same bytes), and a forked
# child starts with none of its parent's (it would hand out the same nonces and keys).
_POOL_BYTES: Final = 4096


class _RandomPool(threading.local):
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.buffer = b""
        self.at = 0

    def take(self, size: int) -> bytes:
        at = self.at
        if at + size > len(self.buffer):
            self.buffer, at = os.urandom(max(_POOL_BYTES, size)), 0
        self.at = at + size
        return self.buffer[at : at + size]


_random = _RandomPool()
os.register_at_fork(after_in_child=_random.clear)


def random_bytes(size: int) -> bytes:
    """`size` bytes from the kernel's random source (`os.urandom`), taken in bulk."""
    return _random.take(size)


def new_key() -> bytes:
    return random_bytes(KEY_BYTES)


@lru_cache(maxsize=4)
def _wrapping(key: bytes) -> AESGCM:
    """The master key's cipher, made once (wrapping a key per new customer made it anew)."""
    return AESGCM(key)


def _seal_bytes(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = random_bytes(NONCE_BYTES)
    return nonce + _wrapping(key).encrypt(nonce, plaintext, context)


def _open_bytes(key: bytes, sealed: bytes, context: bytes) -> bytes:
    try:
        return _wrapping(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)
    except (InvalidTag, ValueError, TypeError):  # (TypeError: text where bytes were stored)
        raise SealError("sealed value does not open with this key") from None


class DataKey:
    """A customer's data key: seals and opens that customer's personal data."""

    __slots__ = ("_aead", "_context")

    def __init__(self, key: bytes, context: bytes) -> None:
        self._aead = AESGCM(key)
        self._context = context

    def seal(self, payload: dict[str, Any]) -> str:
        nonce = random_bytes(NONCE_BYTES)
        blob = nonce + self._aead.encrypt(nonce, orjson.dumps(payload), self._context)
        return base64.b64encode(blob).decode("ascii")

    def open(self, sealed: str) -> dict[str, Any]:
        blob = base64.b64decode(sealed)
        try:
            plain = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._context)
        except (InvalidTag, ValueError):
            raise SealError("sealed value does not open with this key") from None
        value = orjson.loads(plain)
        if not isinstance(value, dict):
            raise SealError("sealed value is not an object")
        return value


def wrap_key(master: bytes, data_key: bytes, context: bytes) -> bytes:
    """Encrypt a data key under the master key (bound to its customer)."""
    return _seal_bytes(master, data_key, b"data-key:" + context)


def unwrap_key(master: bytes, wrapped: bytes, context: bytes) -> bytes:
    return _open_bytes(master, wrapped, b"data-key:" + context)


def key_check(master: bytes) -> str:
    """A public fingerprint of the master key, stored to tell a wrong key from a right one."""
    return hmac.new(master, b"consent-ledger master key check", hashlib.sha256).hexdigest()
