"""Versioned schema migrations, one numbered list per backend.

A migration is applied once, in its own transaction together with its row in
``schema_migrations(version, name, applied_at)``; versions only grow and a released
migration is never edited (add a new one instead).

Table ``events``: the envelope's columns, indexed for the queries people run, plus the whole
event (``event``: JSON text on SQLite, JSONB on PostgreSQL; ``data`` lives inside it, at
``event->'data'``, not stored twice), where it was read from Kafka, and when it was stored.
Timestamps are ``timestamptz`` on PostgreSQL and integer microseconds since the Unix epoch
(UTC) on SQLite, which index and sort as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events",
        (
            """
            CREATE TABLE events (
                event_id TEXT NOT NULL PRIMARY KEY,
                type TEXT NOT NULL,
                timestamp_us INTEGER NOT NULL,
                agent_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                session_id TEXT NOT NULL,
                turn_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                source TEXT NOT NULL,
                schema_version INTEGER NOT NULL,
                event TEXT NOT NULL,
                kafka_topic TEXT,
                kafka_partition INTEGER,
                kafka_offset INTEGER,
                ingested_at_us INTEGER NOT NULL
            )
            """,
            "CREATE INDEX events_session_time ON events (session_id, timestamp_us, seq)",
            "CREATE INDEX events_agent_time ON events (agent_id, timestamp_us)",
            "CREATE INDEX events_type_time ON events (type, timestamp_us)",
            "CREATE INDEX events_time ON events (timestamp_us)",
        ),
    ),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events",
        (
            """
            CREATE TABLE events (
                event_id uuid NOT NULL PRIMARY KEY,
                type text NOT NULL,
                timestamp timestamptz NOT NULL,
                agent_id text NOT NULL,
                user_id text NOT NULL,
                session_id text NOT NULL,
                turn_id text NOT NULL,
                seq bigint NOT NULL,
                source text NOT NULL,
                schema_version integer NOT NULL,
                event jsonb NOT NULL,
                kafka_topic text,
                kafka_partition integer,
                kafka_offset bigint,
                ingested_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX events_session_time ON events (session_id, timestamp, seq)",
            "CREATE INDEX events_agent_time ON events (agent_id, timestamp)",
            "CREATE INDEX events_type_time ON events (type, timestamp)",
            "CREATE INDEX events_time ON events (timestamp)",
        ),
    ),
)
