"""The master key: wrong, missing, malformed, rotated (file and environment), on each backend.

A key problem is one clear line and exit 1, never garbage on stdout, never half a recording.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.crypto import new_key
from ledger.domainmodel import customer_id
from ledger.persistence import tables
from ledger.persistence.database import normalise_url
from tests.cli_helpers import error_line, run, run_json
from tests.personal import raw_bytes_once_pruned


def _key_dir() -> Path:
    return Path(os.environ["CONSENT_LEDGER_KEY_DIR"])


def _prepare(url: str, feed: Path) -> None:
    assert run(url, "db", "upgrade").exit_code == 0
    assert run_json(url, "import", str(feed))["accepted"] == 26


def _rows(url: str, table: sa.Table) -> list[tuple[object, ...]]:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key))]
    finally:
        engine.dispose()


def _refused(url: str, *args: str) -> str:
    result = run(url, *args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    return error_line(result)


def test_a_wrong_master_key_is_refused_clearly(
    ledger_url: str, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prepare(ledger_url, feed_small)
    facts_before = _rows(ledger_url, tables.facts)
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", base64.b64encode(new_key()).decode())
    line = _refused(ledger_url, "customer", "show", "C100", "--json")
    assert "CONSENT_LEDGER_MASTER_KEY is not this ledger's master key" in line
    record = (
        '{"type": "customer.registered", "customer": "C900", "name": "Wrong Key", '
        '"email": "wrong.key@example.org", "address": {"line1": "1 Nowhere", "city": "Nocity", '
        '"postcode": "N0 0NE", "country": "GB"}}'
    )
    assert "not this ledger's master key" in _refused(ledger_url, "record", record)
    # An import says so too, not as a fault of its first line that needed the key.
    feed = tmp_path / "new.jsonl"
    feed.write_text(record.replace("{", '{"id": "w-1", "at": "2025-05-01T00:00:00Z", ', 1) + "\n")
    imported = run(ledger_url, "import", str(feed), "--json")
    assert imported.exit_code == 1 and imported.stdout == ""
    assert "not this ledger's master key" in error_line(imported)
    assert _rows(ledger_url, tables.facts) == facts_before  # nothing half-recorded
    # Commands that need no personal data still work for an auditor without the key.
    assert run(ledger_url, "customer", "trail", "C100", "--json").exit_code == 0


@pytest.mark.parametrize(
    ("value", "says"),
    [("not base64!", "is not base64"), (base64.b64encode(b"short").decode(), "must be 32 bytes")],
)
def test_a_malformed_master_key_is_refused_clearly(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    _prepare(ledger_url, feed_small)
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", value)
    assert says in _refused(ledger_url, "customer", "show", "C100")


def test_a_missing_key_file_is_refused_and_never_silently_replaced(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    key_file = _key_dir() / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.unlink()
    line = _refused(ledger_url, "customer", "show", "C100")
    assert line == (
        "Error: no master key: this ledger's data keys are sealed under a master key that is "
        f"neither in CONSENT_LEDGER_MASTER_KEY nor at {key_file}: restore that key (a new one "
        "cannot open them)"
    )
    # `db upgrade` creates a key only for a ledger that has none: a new key would not open
    # the data keys, and would hide the loss. Nor does it advise running itself.
    assert _refused(ledger_url, "db", "upgrade") == line
    assert not key_file.exists()


def test_a_file_in_place_of_the_key_folder_is_named_not_taken_for_a_lost_key(
    ledger_url: str, feed_small: Path
) -> None:
    """A file where the key folder goes read as "no master key ... restore that key", which
    sends the user looking for a key that is where it always was, in the folder moved away."""
    _prepare(ledger_url, feed_small)
    folder = _key_dir()
    folder.rename(folder.with_name(folder.name + ".moved"))
    folder.write_text("not a folder")
    expected = (
        f"Error: the key folder {folder} is not a folder (something else is in its place), so "
        f"the master key {folder / 'master.key'} cannot be read: put the ledger's key folder "
        "back there"
    )
    assert _refused(ledger_url, "customer", "show", "C100") == expected
    assert _refused(ledger_url, "db", "upgrade") == expected
    assert folder.read_text() == "not a folder"


def test_a_master_key_file_others_can_read_is_warned_of(ledger_url: str, feed_small: Path) -> None:
    """A `master.key` copied as 0644 opens every customer's data to every user of the
    machine: accepted silently (privacy review). Warned of, not refused: a Kubernetes secret
    is mounted 0644 unless told otherwise."""
    _prepare(ledger_url, feed_small)
    key_file = _key_dir() / "master.key"
    quiet = run(ledger_url, "customer", "show", "C100")
    assert quiet.exit_code == 0 and "can be read or changed by other users" not in quiet.stderr
    key_file.chmod(0o644)
    warned = run(ledger_url, "customer", "show", "C100")
    assert warned.exit_code == 0, warned.stderr
    assert (
        f"the master key file {key_file} can be read or changed by other users (mode 0644): "
        f"it opens every customer's personal data; chmod 600 {key_file}"
    ) in warned.stderr
    # A command that never opens the key says nothing of it
    assert "master key file" not in run(ledger_url, "customer", "trail", "C100").stderr


def test_rotation_rewraps_every_key_keeps_events_and_retires_the_old_key(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prepare(ledger_url, feed_small)
    before = run_json(ledger_url, "customer", "show", "C100")
    suppressed = run_json(ledger_url, "suppression", "check", "ada@example.org")
    events = _rows(ledger_url, tables.events)
    keys_before = dict((r[0], r[1]) for r in _rows(ledger_url, tables.data_keys))
    old_key = (_key_dir() / "master.key").read_bytes()

    rotated = run_json(ledger_url, "keys", "rotate")

    assert rotated["data_keys"] == 1  # C100; C101 was erased by the feed
    new_file, old_file = Path(rotated["key_file"]), Path(rotated["old_key_file"])
    assert new_file == _key_dir() / "master.key" and new_file.read_bytes() != old_key
    assert old_file.read_bytes() == old_key
    for path in (new_file, old_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _rows(ledger_url, tables.events) == events
    keys_after = dict((r[0], r[1]) for r in _rows(ledger_url, tables.data_keys))
    assert keys_after.keys() == keys_before.keys()
    assert all(keys_after[k] != v for k, v in keys_before.items() if v is not None)
    assert all(keys_after[k] is None for k, v in keys_before.items() if v is None)
    old_wrapping = next(v for v in keys_before.values() if v is not None)
    assert old_wrapping not in raw_bytes_once_pruned(ledger_url, old_wrapping)
    assert run_json(ledger_url, "customer", "show", "C100") == before
    assert run_json(ledger_url, "suppression", "check", "ada@example.org") == suppressed
    assert run_json(ledger_url, "customer", "show", "C101")["details"] is None

    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY_FILE", str(old_file))
    assert "not this ledger's master key" in _refused(ledger_url, "customer", "show", "C100")


def test_rotation_with_the_key_in_the_environment_hands_over_a_new_key_file(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = base64.b64encode(new_key()).decode()
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", old)
    _prepare(ledger_url, feed_small)
    assert not (_key_dir() / "master.key").exists()
    result = run(ledger_url, "keys", "rotate")
    assert result.exit_code == 0, result.stderr
    new_file = _key_dir() / "master.key.new"
    assert "set CONSENT_LEDGER_MASTER_KEY" in result.stdout and str(new_file) in result.stdout
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    new = new_file.read_text().strip()
    assert new not in result.stdout + result.stderr  # a key is never printed
    refused = _refused(ledger_url, "customer", "show", "C100")
    assert "not this ledger's master key" in refused and str(new_file) in refused
    # Rotating again before the handover installs nothing and hands over the same file.
    again = run_json(ledger_url, "keys", "rotate")
    assert (again["finished_earlier"], again["key_file"]) == (True, str(new_file))
    assert new_file.read_text().strip() == new
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", new)
    assert run_json(ledger_url, "customer", "show", "C100")["details"]["name"] == "Ada Lovelace"
    # Once the environment holds it, the file is a spare copy: the next rotation goes ahead.
    third = run_json(ledger_url, "keys", "rotate")
    assert (third["finished_earlier"], third["data_keys"]) == (False, 1)
    assert new_file.read_text().strip() != new


def _set_wrapped(url: str, values: dict[object, object]) -> None:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            for ident, wrapped in values.items():
                conn.execute(
                    tables.data_keys.update()
                    .where(tables.data_keys.c.customer_id == ident)
                    .values(wrapped_key=wrapped)
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("change", ["swapped", "damaged"])
def test_an_altered_data_key_row_is_named_as_such_not_blamed_on_the_master_key(
    ledger_url: str, feed_small: Path, change: str
) -> None:
    """The master key is the ledger's own (its fingerprint matches), so a data key that does
    not open with it was changed in the database: an integrity failure (exit 4) naming the
    key row, not a 'wrong master key' that would send support after the wrong thing."""
    _prepare(ledger_url, feed_small)
    second = (
        '{"id": "reg-c102", "type": "customer.registered", "customer": "C102", "name": "Second '
        'Key", "email": "second.key@example.org", "address": {"line1": "2 Way", "city": "Leeds", '
        '"postcode": "LS2 2BB", "country": "GB"}, "at": "2025-06-01T09:00:00Z"}'
    )
    assert run(ledger_url, "record", second).exit_code == 0
    live = {r[0]: r[1] for r in _rows(ledger_url, tables.data_keys) if r[1] is not None}
    first, other = customer_id("C100"), customer_id("C102")
    assert live.keys() == {first, other}
    if change == "swapped":
        _set_wrapped(ledger_url, {first: live[other], other: live[first]})
    else:
        damaged = bytearray(live[first])  # type: ignore[arg-type]
        damaged[-1] ^= 1
        _set_wrapped(ledger_url, {first: bytes(damaged)})
    keys_before = _rows(ledger_url, tables.data_keys)

    shown = run(ledger_url, "customer", "show", "C100", "--json")
    assert shown.exit_code == 4, (shown.stdout, shown.stderr)
    assert shown.stdout == ""
    line = error_line(shown)
    assert "the key row was changed outside consent-ledger" in line
    assert "master key, which is the right one" in line
    rotated = run(ledger_url, "keys", "rotate", "--json")
    assert rotated.exit_code == 4, (rotated.stdout, rotated.stderr)
    assert "nothing rotated" in error_line(rotated)
    assert _rows(ledger_url, tables.data_keys) == keys_before
    assert not list(_key_dir().glob("*.new"))  # the pending new key is removed


def test_a_second_machine_without_the_signing_key_is_refused_never_given_a_new_one(
    ledger_url: str, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another machine (another key folder) that has the master key but not the ledger's
    signing key: `db upgrade` must not make a new key pair, nor may any write sign with one,
    or every checkpoint signed from then on fails `verify`, for good."""
    _prepare(ledger_url, feed_small)
    first = _key_dir()
    master = (first / "master.key").read_text().strip()
    checkpoints = _rows(ledger_url, tables_checkpoints())
    elsewhere = tmp_path / "machine-b-keys"
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(elsewhere))
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", master)
    consent = ("consent", "give", "C100", "market_research", "email", "--method", "web")
    consent += ("--policy-version", "v3")

    for args in (("db", "upgrade"), consent):
        line = _refused(ledger_url, *args)
        assert "this ledger signs with key" in line, args
        assert "copy its signing.key and signing.pub into that folder" in line
    assert not (elsewhere / "signing.key").exists()
    # A signing key of its own there (another ledger's, or made by hand) is refused too.
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "signing.key").write_bytes(_new_signing_key_pem())
    assert "is not this ledger's, which signs with key" in _refused(ledger_url, *consent)
    assert _rows(ledger_url, tables_checkpoints()) == checkpoints  # nothing signed

    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(first))
    assert run(ledger_url, *consent).exit_code == 0
    assert run_json(ledger_url, "verify")["ok"] is True


def test_an_unreadable_signing_key_is_named_so_not_as_missing(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signing.key the command may not read was reported as missing, and the user told to
    copy one in from where the ledger was created: the key is there, its mode is wrong."""
    import errno

    _prepare(ledger_url, feed_small)
    path = _key_dir() / "signing.key"
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # (root reads any file: the mode cannot show it here)
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    consent = ("consent", "give", "C100", "market_research", "email", "--method", "web")
    line = _refused(ledger_url, *consent, "--policy-version", "v3")
    assert line.startswith(f"Error: cannot read the signing key {path}: "), line
    assert line.endswith(": Permission denied"), line


def test_a_second_machine_is_refused_even_before_the_first_checkpoint(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key id is kept when `db upgrade` makes the key pair: a second machine's `db
    upgrade` on a ledger that has signed nothing yet must not make a key pair of its own."""
    assert run(ledger_url, "db", "upgrade").exit_code == 0
    master = (_key_dir() / "master.key").read_text().strip()
    elsewhere = tmp_path / "machine-b-keys"
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(elsewhere))
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", master)
    assert "this ledger signs with key" in _refused(ledger_url, "db", "upgrade")
    assert not (elsewhere / "signing.key").exists()


def test_a_first_command_that_finds_the_key_pair_made_meanwhile_by_another_takes_it(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four first commands racing on a new ledger: one saw no signing key, then, before it
    read the ledger's key id, another made the pair and kept its id. It was refused ('no
    signing key ... this ledger signs with key ...', exit 1): the key is there by then, and
    it must take it."""
    from ledger.persistence import seals
    from ledger.persistence.database import Database

    database = Database(ledger_url)
    try:
        assert run(ledger_url, "db", "upgrade").exit_code == 0
        private = _key_dir() / "signing.key"
        made = private.read_bytes()
        key_id = seals._latest_key_id(database)
        private.unlink()  # as the other command's key was when this one looked
        looked_up = seals._latest_key_id

        def another_makes_it_meanwhile(db: Database) -> str | None:
            if not private.exists():
                private.write_bytes(made)
                private.chmod(0o600)
            return looked_up(db)

        monkeypatch.setattr(seals, "_latest_key_id", another_makes_it_meanwhile)
        assert seals.create_signing_key(database) is False
        assert seals._latest_key_id(database) == key_id
        assert private.read_bytes() == made
    finally:
        database.dispose()


def tables_checkpoints() -> sa.Table:
    from ledger.persistence.seals import checkpoints

    return checkpoints


def _new_signing_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("cut", [KeyboardInterrupt, PermissionError])
def test_a_rotation_cut_off_after_its_commit_keeps_the_new_key_and_is_finished_later(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch, cut: type[BaseException]
) -> None:
    """Once the rotation has committed, the new key in master.key.new is the only one that
    opens the ledger: whatever stops the command then (Ctrl-C, a key file that cannot be
    replaced, kill -9), that file stays, every command says where the key is, and the next
    `keys rotate` installs it instead of rotating again."""
    from ledger.persistence.keys import KeyStore

    _prepare(ledger_url, feed_small)
    before = run_json(ledger_url, "customer", "show", "C100")
    key_file = _key_dir() / "master.key"
    old_key = key_file.read_bytes()
    real_install = KeyStore._install

    def cut_off(*args: object, **kwargs: object) -> None:
        raise cut(13, "Operation not permitted") if cut is PermissionError else cut()

    monkeypatch.setattr(KeyStore, "_install", cut_off)
    stopped = run(ledger_url, "keys", "rotate")
    assert stopped.exit_code == 1, stopped.stderr
    if cut is PermissionError:
        assert "the rotation committed, but its key could not be put in place" in stopped.stderr
    pending = _key_dir() / "master.key.new"
    assert pending.exists() and key_file.read_bytes() == old_key
    line = _refused(ledger_url, "customer", "show", "C100")
    assert "a 'keys rotate' committed a new master key that is not installed yet" in line
    assert str(pending) in line

    monkeypatch.setattr(KeyStore, "_install", real_install)
    finished = run_json(ledger_url, "keys", "rotate")
    assert (finished["finished_earlier"], finished["data_keys"]) == (True, 0)
    assert not pending.exists()
    assert Path(finished["old_key_file"]).read_bytes() == old_key
    assert run_json(ledger_url, "customer", "show", "C100") == before


def test_a_rotation_that_fails_before_its_commit_leaves_the_old_key(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.persistence.keys import KeyStore

    _prepare(ledger_url, feed_small)
    before = run_json(ledger_url, "customer", "show", "C100")
    old_key = (_key_dir() / "master.key").read_bytes()

    def broken(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(KeyStore, "_rewrap", broken)
    assert run(ledger_url, "keys", "rotate").exit_code == 1
    assert not (_key_dir() / "master.key.new").exists()
    assert (_key_dir() / "master.key").read_bytes() == old_key
    assert run_json(ledger_url, "customer", "show", "C100") == before


def test_a_second_rotation_while_one_runs_is_refused_and_touches_nothing(
    ledger_url: str, feed_small: Path
) -> None:
    """Two rotations at once: the second took the first one's master.key.new for a leftover
    and removed it, and the first then installed the second's key; the key that opened the
    ledger was lost. Now one runs at a time (a lock beside the key file)."""
    import fcntl

    _prepare(ledger_url, feed_small)
    before = run_json(ledger_url, "customer", "show", "C100")
    key_file = _key_dir() / "master.key"
    old_key = key_file.read_bytes()
    pending = _key_dir() / "master.key.new"
    pending.write_bytes(base64.b64encode(new_key()) + b"\n")  # the running one's new key
    with open(_key_dir() / "master.key.rotating", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the running rotation holds it
        line = _refused(ledger_url, "keys", "rotate")
        assert "another 'keys rotate' of this ledger's master key is running" in line
        assert pending.exists() and key_file.read_bytes() == old_key
    pending.unlink()  # (the running one would have committed or removed it)
    assert run_json(ledger_url, "keys", "rotate")["data_keys"] == 1
    assert run_json(ledger_url, "customer", "show", "C100") == before


def test_a_rotation_while_a_command_runs_is_not_taken_for_an_altered_key_row(
    ledger_url: str, feed_small: Path
) -> None:
    """A long command (an identified export) that loaded the master key before a rotation
    committed meets data keys wrapped under the new one: that is a rotation meanwhile, not
    a key row changed outside consent-ledger (whose advice, restore the table from a
    backup, would lose the keys made since)."""
    from ledger.config import open_ledger
    from ledger.domainmodel import customer_id
    from ledger.errors import DataKeyAlteredError, MasterKeyError

    _prepare(ledger_url, feed_small)
    running = open_ledger(ledger_url)
    try:
        assert running.keys.source  # the master key loaded, as a command's first read does
        assert run_json(ledger_url, "keys", "rotate")["data_keys"] == 1
        with pytest.raises(MasterKeyError) as raised:
            running.keys.get(customer_id("C100"))
        assert not isinstance(raised.value, DataKeyAlteredError)
        assert "rotated while this command ran; run it again" in str(raised.value)
    finally:
        running.database.dispose()
