"""The ledger's own tables. Alembic (in `migrations/`) creates them from these definitions.

`ledger_events` is the event store: one row per domain event, `notification_id` the gapless
recording order (assigned under the writer's lock, so leaf N of the integrity tree is row N).
`ledger_facts` makes a fact id recordable once for all time (its primary key is the
idempotency guarantee, whatever races in memory). `ledger_orders` routes an order's facts
to its customer's stream; `ledger_customers` lists customers; `ledger_data_keys` holds
wrapped per-customer keys apart from the events, so a key can be destroyed (erasure) while
the events stay untouched.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)

metadata = MetaData()

events = Table(
    "ledger_events",
    metadata,
    Column(
        "notification_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("originator_id", Uuid(), nullable=False),
    Column("originator_version", Integer, nullable=False),
    Column("topic", Text, nullable=False),
    Column("state", LargeBinary, nullable=False),
    UniqueConstraint("originator_id", "originator_version", name="uq_ledger_events_stream"),
)

facts = Table(
    "ledger_facts",
    metadata,
    Column("fact_id", String(500), primary_key=True),
    Column("notification_id", BigInteger, nullable=False, index=True),
    Column("fact_type", String(40), nullable=False),
    Column("originator_id", Uuid(), nullable=False),
)
# The transfer initiations only (`sqlite_reads.INITIATIONS_ONLY`, what every preventive check
# reads). Migration 0008's partial index of them is not declared here: its PostgreSQL option
# would load SQLAlchemy's whole PostgreSQL dialect (asyncpg's included) into every SQLite
# command that uses these models, 70-80 ms of each one's start.
# The transfer disclosures and rectifications only: what is read, from event 0, for the
# customers an identified export made as of a time may have given details a rectification
# changed (`export_store.rectified_after_disclosing`). Migration 0013's partial index
# (`ix_ledger_facts_disclosures_rectifications`) has this condition, the same text exactly.
DISCLOSURES_AND_RECTIFICATIONS_ONLY = "fact_type IN ('transfer.disclosure', 'customer.updated')"

orders = Table(
    "ledger_orders",
    metadata,
    Column("order_ref", String(500), primary_key=True),
    Column("customer_id", Uuid(), nullable=False, index=True),
)

customers = Table(
    "ledger_customers",
    metadata,
    Column("customer_id", Uuid(), primary_key=True),
    Column("customer_ref", String(500), nullable=False, unique=True),
    Column("notification_id", BigInteger, nullable=False),
)

data_keys = Table(
    "ledger_data_keys",
    metadata,
    Column("customer_id", Uuid(), primary_key=True),
    # NULL once destroyed: the customer's sealed data can no longer be opened.
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True), nullable=True),
)

meta = Table(
    "ledger_meta",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# Art. 21: marketing suppressed per keyed hash of a normalised email (never the email), per
# channel. No customer id: it outlives the customer's erasure without pointing back at them,
# and its time (`since`) is withheld then, as it is a withdrawal's in their consent history.
suppressions = Table(
    "ledger_suppressions",
    metadata,
    Column("email_hash", String(64), primary_key=True),
    Column("channel", String(20), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=True),  # None: withheld (0010)
)

# Due-diligence exports: one row per export. `wrapped_secret` is the export's pseudonym key
# (HMAC-SHA256 of customer references), wrapped by the master key: only the ledger's owner
# can re-identify an export's pseudonyms. The export itself is an event on the acquirer.
export_secrets = Table(
    "ledger_export_secrets",
    metadata,
    Column("export_id", Uuid(), primary_key=True),
    Column("acquirer", String(500), nullable=False),
    Column("wrapped_secret", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("identified", Boolean, nullable=False),
    Column("customers", Integer, nullable=False),
)
