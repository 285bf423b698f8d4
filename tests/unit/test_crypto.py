"""Keys and nonces are taken from a pool of the kernel's random bytes: never the same twice."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from ledger import crypto


def test_keys_and_nonces_never_repeat_across_pool_refills() -> None:
    size = crypto.KEY_BYTES
    # Enough to refill the pool several times, with a take that does not divide its size.
    taken = [crypto.random_bytes(size) for _ in range(3 * crypto._POOL_BYTES // size)]
    taken += [crypto.random_bytes(crypto.NONCE_BYTES) for _ in range(1000)]
    assert all(len(value) in (size, crypto.NONCE_BYTES) for value in taken)
    assert len(set(taken)) == len(taken)


def test_a_take_larger_than_the_pool_is_whole() -> None:
    assert len(crypto.random_bytes(crypto._POOL_BYTES + 1)) == crypto._POOL_BYTES + 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_hand_out_its_parents_next_bytes() -> None:
    crypto._random.clear()
    crypto.random_bytes(1)  # the pool holds a fresh refill, all but a byte not handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next key, to the parent
        try:
            os.write(write, crypto.new_key())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, crypto.KEY_BYTES)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == crypto.KEY_BYTES
    assert child != crypto.new_key()  # the parent's next key: same bytes without the reset


def test_a_sealed_value_opens_with_its_key_and_context_only() -> None:
    key = crypto.new_key()
    sealed = crypto.DataKey(key, b"customer-1").seal({"email": "a@example.com"})
    assert crypto.DataKey(key, b"customer-1").open(sealed) == {"email": "a@example.com"}
    with pytest.raises(crypto.SealError):
        crypto.DataKey(key, b"customer-2").open(sealed)
    with pytest.raises(crypto.SealError):
        crypto.DataKey(crypto.new_key(), b"customer-1").open(sealed)


def test_each_thread_takes_from_a_pool_of_its_own() -> None:
    crypto.random_bytes(1)
    mine = crypto._random.buffer

    def theirs() -> bytes:
        crypto.random_bytes(1)
        return crypto._random.buffer

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(theirs).result()
    assert other is not mine
    assert crypto._random.buffer is mine
