"""Reads of a PostgreSQL ledger on psycopg itself, without SQLAlchemy.

What `sqlite_reads` does for an SQLite file: a query command (`customer trail`, `consent
show`) checks the schema's revision and reads one stream, a few milliseconds of SQL.
Importing SQLAlchemy and creating its engine (whose dialect questions the server on its
first connection) cost about a third of such a process, so `Database` reads a plain
PostgreSQL URL through here when it is not inside a write. Each read is one statement in
autocommit mode, which sees one snapshot of committed transactions by itself, as
`Database.reading_statement` reads. Each thread of each process has its own connection.

The URL is handed to libpq as a URI, as SQLAlchemy hands its parts to psycopg: user,
password, host, port, database, and the query's parameters (e.g. `options`), with the
same connection arguments (`connect_timeout`, `application_name`). Errors name the URL
without its password, as `Database` does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ledger.errors import DatabaseUnavailableError
from ledger.persistence.readers import PerThread, first_line
from ledger.persistence.sqlite_reads import for_driver

if TYPE_CHECKING:
    import psycopg

# The URLs that name psycopg, as `database.normalise_url` reads them.
_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
# The client encoding is UTF8 whatever the environment says: libpq takes PGCLIENTENCODING
# (LATIN1, say) as its default, and then a reference such as "Ω" failed to encode (an
# unexpected error), an answer holding one failed on the server, and in SQL_ASCII every text
# came back as bytes (the schema "b'0013'" unknown). The database itself is UTF8 (`db upgrade`).
CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    "application_name": "consent-ledger",
    "client_encoding": "utf8",
}

_TABLE_NAMES = (
    "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
    "ORDER BY tablename"
)
_HAS_REVISION = "SELECT to_regclass('alembic_version') IS NOT NULL"
_REVISION = "SELECT version_num FROM alembic_version"


def plain_postgres_url(url: str) -> str | None:
    """The libpq URI of a PostgreSQL URL on psycopg; None for any other URL.

    A `+` in the query is a space to SQLAlchemy (as in a form) but a plus to libpq: it is
    given to libpq as `%20`, so that both read `options=-c a=1+-c b=2` as the same two
    settings (else a read would set a search path of "s+-c ...", and find no ledger)."""
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            head, mark, query = rest.partition("?")
            return "postgresql://" + head + mark + query.replace("+", "%20")
    return None


# A PostgreSQL URL of letters, digits and `_.-` only: user, password, host, port, database.
_PLAIN = re.compile(
    r"(?:postgresql|postgres|postgresql\+psycopg)://"
    r"(?:(?P<user>[A-Za-z0-9_.-]+)(?P<password>:[A-Za-z0-9_.-]+)?@)?"
    r"(?P<host>[A-Za-z0-9_.-]+)(?P<port>:[1-9][0-9]{0,4})?/(?P<database>[A-Za-z0-9_.-]+)"
)


def rendered_url(url: str) -> str | None:
    """A plain URL (`_PLAIN`) as SQLAlchemy renders it, password hidden (`normalise_url`,
    then `URL.render_as_string()`): what names a PostgreSQL ledger's key folder
    (`database.default_key_dir`), known without loading SQLAlchemy for a one-fact write.
    None for any other URL, which only SQLAlchemy renders (a test holds the two together)."""
    found = _PLAIN.fullmatch(url)
    if found is None:
        return None
    user, port = found["user"], found["port"] or ""
    credentials = f"{user}{':***' if found['password'] else ''}@" if user else ""
    return f"postgresql+psycopg://{credentials}{found['host']}{port}/{found['database']}"


class Readers(PerThread["psycopg.Connection[Any]"]):
    """A read connection to one PostgreSQL database per thread and process, on first use."""

    def __init__(self, uri: str, url: str) -> None:
        super().__init__()
        self.uri = uri
        self.url = url  # may hold a password: shown only through `_safe`

    def _safe(self) -> str:
        """The URL as `Database` names it in errors (driver named, password hidden)."""
        from ledger.persistence.database import parse_url, safe_url

        return safe_url(parse_url(self.url))

    def _connect_failure(self, error: BaseException) -> str:
        from ledger.persistence.database import connect_failure, parse_url

        return connect_failure(parse_url(self.url), error)

    def _usable(self, conn: psycopg.Connection[Any]) -> bool:
        return not conn.closed

    def _open(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(self.uri, autocommit=True, **CONNECT_ARGS)
        except psycopg.Error as error:
            raise DatabaseUnavailableError(
                f"cannot connect to {self._safe()}: {self._connect_failure(error)}"
            ) from None

    def _begin(self) -> psycopg.Connection[Any]:
        # One round trip: the snapshot is taken at the first read and kept to the end.
        self.fetch("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", fetched=False)
        return self.connection()  # (the one it ran on: opened again if the server ended one)

    def _end(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        try:
            conn.execute("COMMIT")
        except psycopg.Error:  # (nothing was written) not used again: it may be in the block
            self.discard(conn)

    def fetch(self, sql: str, params: tuple[Any, ...] = (), *, fetched: bool = True) -> list[Any]:
        """The rows of one statement (`?` marks). A connection the server ended while it
        was held (an administrator, an idle timeout, a restart) is opened again and the
        statement read again, once: a read in autocommit changes nothing (but not inside a
        `snapshot()`, whose reads are all on the one connection)."""
        import psycopg

        for attempt in (1, 2):
            conn = self.connection()
            try:
                with conn.cursor() as cursor:
                    cursor.execute(for_driver(sql, "pyformat"), params)
                    return list(cursor.fetchall()) if fetched else []
            except psycopg.Error as error:  # e.g. the server went away
                lost = isinstance(error, psycopg.OperationalError) and conn.closed
                if attempt == 1 and lost and not self.in_snapshot:
                    continue
                raise DatabaseUnavailableError(
                    f"the database {self._safe()} failed: {first_line(error)}"
                ) from None
        raise AssertionError("unreachable")  # (the second attempt returns or raises)

    def table_names(self) -> list[str]:
        return [name for (name,) in self.fetch(_TABLE_NAMES)]

    def schema_revision(self) -> str | None:
        if not self.fetch(_HAS_REVISION)[0][0]:
            return None
        rows = self.fetch(_REVISION)
        return str(rows[0][0]) if rows else None
