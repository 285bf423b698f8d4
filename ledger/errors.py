"""One hierarchy of errors. The CLI maps each branch to an exit code in one place.

Messages never contain personal data: they name fields, references and fact ids, not values.
"""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class UnexpectedError(LedgerError):
    """A failure the ledger did not raise on purpose: a bug, or a database changed outside
    the ledger (exit 1). Named by the exception's type and where it was raised, never by its
    message, which could quote the data it failed on."""


class InputError(LedgerError):
    """Bad input: the user can fix the request or the feed (exit 1)."""


class InvalidFactError(InputError):
    """A fact (a feed line or a command's fact) does not satisfy SPEC §2."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


class UnknownReferenceError(InvalidFactError):
    """A fact names a customer or order the ledger has not seen (yet: an import waits for a
    registration later in the same file)."""

    def __init__(self, kind: str, ref: str) -> None:
        self.kind = kind  # "customer" or "order"
        self.ref = ref
        super().__init__(f"unknown {kind} {ref!r}")


class InvalidFeedError(InputError):
    """A feed file had invalid lines; nothing from it was recorded."""

    def __init__(self, errors: list[InvalidFactError], accepted: int, duplicates: int) -> None:
        self.errors = errors
        self.accepted = accepted
        self.duplicates = duplicates
        first = errors[0]
        more = f" (and {len(errors) - 1} more invalid lines)" if len(errors) > 1 else ""
        super().__init__(f"{first}{more}; nothing from the file was recorded")


class CustomerNotFoundError(InputError):
    def __init__(self, ref: str, known_at: Any = None) -> None:
        self.ref = ref
        if known_at is None:
            super().__init__(f"customer {ref!r} is not in the ledger")
        else:  # --known-at: the ledger as it stood then
            from ledger.feed import iso  # (the feed's module imports this one)

            super().__init__(
                f"customer {ref!r} was not in the ledger as known at {iso(known_at)}: "
                "nothing about them had been recorded by then"
            )


class OrderNotFoundError(InputError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"order {ref!r} is not in the ledger")


class FactNotFoundError(InputError):
    def __init__(self, fact_id: str) -> None:
        self.fact_id = fact_id
        super().__init__(f"fact {fact_id!r} is not in the ledger")


class DuplicateFactError(InputError):
    def __init__(self, fact_id: str, recorded_type: str | None = None) -> None:
        self.fact_id = fact_id
        if recorded_type is None:
            super().__init__(f"fact {fact_id!r} is already recorded")
        else:
            super().__init__(
                f"fact id {fact_id!r} is already taken by another fact ({recorded_type}): "
                "nothing recorded; give this one a new id, or none"
            )


class CustomerErasedError(InputError):
    def __init__(self, ref: str, what: str) -> None:
        self.ref = ref
        super().__init__(f"customer {ref!r} has been erased: {what} is not accepted")


class RuleViolationError(LedgerError):
    """A fact would break a rule of SPEC §3 now; nothing was recorded (exit 3)."""

    def __init__(self, rules: list[str], fact_id: str, detail: str) -> None:
        self.rules = rules
        self.fact_id = fact_id
        super().__init__(f"refused by rule {', '.join(rules)}: {detail}; nothing was recorded")


class ConfigurationError(LedgerError):
    """The ledger cannot start: database, schema or keys (exit 1)."""


class SchemaOutOfDateError(ConfigurationError):
    def __init__(self, current: str | None, head: str) -> None:
        where = "has no ledger schema" if current is None else f"is at schema {current}"
        super().__init__(
            f"the database {where}, this version needs {head}: run 'consent-ledger db upgrade'"
        )


class SchemaTooNewError(ConfigurationError):
    """The database was upgraded by a newer consent-ledger: this one cannot read it, nor
    take it back."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(
            f"the database is at schema {current}, which this version of consent-ledger does "
            f"not know (it knows up to {head}): use the newer consent-ledger that upgraded it"
        )


class DatabaseUnavailableError(ConfigurationError):
    pass


class LedgerNotFoundError(ConfigurationError):
    """A command that only reads (or changes what is recorded) was pointed at an SQLite file
    that does not exist: a mistyped path must not answer as an empty ledger ("ok, 0 facts")."""

    def __init__(self, url: str, path: str, *, empty: bool = False) -> None:
        what = "is empty" if empty else "does not exist"
        super().__init__(
            f"no ledger at {url}: the file {path} {what} (check the path, --db or "
            "CONSENT_LEDGER_DB); a first import or record, or 'consent-ledger db upgrade', "
            "creates a new ledger"
        )


class MasterKeyError(ConfigurationError):
    """The master key is missing, unreadable or does not open this ledger's data keys."""


class IntegrityFailure(LedgerError):
    """The ledger or an export failed verification (exit 4). `problem_kind` names it as a
    problem of `verify --json` when it stops `verify` itself."""

    problem_kind = "unverifiable"


class DataKeyAlteredError(IntegrityFailure):
    """A customer's wrapped data key does not open with the ledger's master key, although
    that key is the ledger's own (its fingerprint matches): the key row, not the master key,
    was changed outside consent-ledger (damaged, or another customer's key put in its place:
    each data key is bound to its customer). `verify` runs without the master key and cannot
    see this; the command that needed the key does."""

    def __init__(self, doing: str = "") -> None:
        super().__init__(
            "a customer's data key does not open with this ledger's master key, which is the "
            "right one (its fingerprint matches): the key row was changed outside "
            f"consent-ledger (damaged, or another customer's key put in its place){doing}; "
            "restore the ledger_data_keys table from a backup"
        )


class DataKeyMissingError(IntegrityFailure):
    """A customer's data key is gone, yet no erasure of theirs is recorded: only an erasure
    destroys a key, so the key row was removed or emptied outside consent-ledger. Answering
    "erased" would tell the customer their data was erased when it never was."""

    def __init__(self, ref: str) -> None:
        super().__init__(
            f"customer {ref!r}'s data key is gone, but no erasure of theirs is recorded: the "
            "key row was removed or emptied outside consent-ledger ('consent-ledger verify' "
            "names it: key_altered); restore the ledger_data_keys table from a backup"
        )


class UnreadableSourceRowError(IntegrityFailure):
    """`db copy`: a row of the source holds a value of a type the ledger never writes."""

    def __init__(self, table: str) -> None:
        super().__init__(
            f"the ledger's table {table} holds a value of a type the ledger never writes: it "
            "was changed outside consent-ledger, and nothing was copied; 'consent-ledger "
            "verify' names what changed where it can"
        )


class DamagedDatabaseError(IntegrityFailure):
    """SQLite found its own file damaged ("database disk image is malformed"): not a fact
    altered, which `verify` would name, but pages it cannot read (exit 4)."""

    problem_kind = "database_damaged"

    def __init__(self, where: str) -> None:
        super().__init__(
            f"the database file of {where} is damaged (SQLite: database disk image is "
            "malformed), so the ledger cannot be read, nor verified: restore it from a backup "
            "(a disk fault, a copy taken while it was written, or its -wal file removed while "
            "in use can do this)"
        )


class UnreadableRowError(IntegrityFailure):
    """A row beside the events (a checkpoint, an index row) holds a value of a type the
    ledger never writes, which `verify` cannot read as anything it checks."""

    problem_kind = "row_unreadable"

    def __init__(self, kind: str) -> None:
        super().__init__(
            "verify cannot read a row of the ledger's tables: it holds a value of a type the "
            f"ledger never writes ({kind}); the database was changed outside consent-ledger "
            "(if it was not, this is a bug: please report it with this line)"
        )


class UnreadableEventError(IntegrityFailure):
    """A stored event's state is not what the ledger wrote (it only ever writes JSON it can
    read back): the database was changed outside consent-ledger."""

    def __init__(self, where: str = "") -> None:
        self.where = where
        super().__init__(
            f"a stored event{where} cannot be read as the ledger wrote it: the database was "
            "changed outside consent-ledger; 'consent-ledger verify' names what changed (if "
            "it finds nothing, this is a bug: please report it with this line)"
        )


class ShredPendingError(LedgerError):
    """The database still holds old bytes of destroyed keys: another session held the
    clean-up back (exit 1; run it again once that session ends)."""

    def __init__(self) -> None:
        super().__init__(
            "the database still holds the old bytes of a destroyed key: another session holds "
            "them (one reading a snapshot from before the erasure, such as an export, a verify "
            "or a backup, or on SQLite one writing), or on PostgreSQL this role does not own "
            "ledger_data_keys and cannot VACUUM it, or the disk is full; run 'consent-ledger "
            "keys shred' again once that ends"
        )


class InterruptedCommand(LedgerError):
    """Ctrl-C or SIGTERM stopped the command (exit 1)."""

    def __init__(self) -> None:
        super().__init__(
            "interrupted: what the command had not committed was rolled back, and its "
            "unfinished files removed"
        )


class SystemFailure(LedgerError):
    """A file, a stream or a device failed under the command (a full disk, a permission, a
    closed stdout): exit 1. Says whether the command had committed anything before."""

    def __init__(self, reason: str, *, committed: bool) -> None:
        after = (
            "what the command changed in the ledger before that is committed (a query shows it)"
            if committed
            else "no fact was recorded"
        )
        super().__init__(f"{reason}; {after}")


class WorkerLostError(LedgerError):
    """A process sharing a command's work ended without its result (killed outright, or
    by the out-of-memory killer): exit 1. `what` says what that leaves."""

    def __init__(self, worker: str, what: str) -> None:
        super().__init__(
            f"{worker} ended without its result (it was killed, or ran out of memory); "
            f"{what}: run it again"
        )


class ConcurrencyError(LedgerError):
    """Another writer recorded the same facts at the same moment; retry (exit 1)."""


# The number of worker processes a large read-model pass may use (see projections.parallel).
WORKERS_ENV = "CONSENT_LEDGER_WORKERS"


class ReadModelWorkerError(LedgerError):
    """A worker process folding a read-model pass failed; the pass was rolled back (exit 1)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}; nothing was changed: queries answer from the read models as they were "
            f"(set {WORKERS_ENV}=0 to fold in this process only)"
        )
