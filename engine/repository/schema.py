"""The repository schema as an ordered list of migrations, and the code that applies them.

``PRAGMA user_version`` holds how many migrations a database has had. Opening applies the missing
ones, all in one ``BEGIN IMMEDIATE`` transaction together with the new ``user_version``, so a
crash or an error leaves the previous version intact. A database whose version is higher than
``len(MIGRATIONS)`` was written by a newer wfe and is refused.

To change the schema, append one SQL script to ``MIGRATIONS`` (never edit or reorder an applied
one). Do not put ``BEGIN``/``COMMIT`` in it.
"""

from __future__ import annotations

import sqlite3

from wfe.engine.repository.broadcasts import SCHEMA as BROADCASTS_SCHEMA
from wfe.engine.repository.errors import RepositoryError, SchemaTooNew
from wfe.engine.repository.executions import SCHEMA as EXECUTIONS_SCHEMA
from wfe.engine.repository.pilots import SCHEMA as PILOTS_SCHEMA
from wfe.engine.repository.replicas import SCHEMA as REPLICAS_SCHEMA

_CORE = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
  subject TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE INDEX events_subject ON events(subject, id);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('action','rscript')), name TEXT NOT NULL,
  parent_id TEXT REFERENCES jobs(id), root_id TEXT NOT NULL, call_seq INTEGER,
  params TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  requirements TEXT NOT NULL DEFAULT '{}', max_attempts INTEGER NOT NULL DEFAULT 1,
  attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
  result TEXT, error TEXT, request_id TEXT, UNIQUE (parent_id, call_seq));
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_parent ON jobs(parent_id);
CREATE TABLE attempts (
  job_id TEXT NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, state TEXT NOT NULL, agent TEXT,
  exit_code INTEGER, signal INTEGER, reason TEXT, detail TEXT, dispatched_at REAL, started_at REAL,
  ended_at REAL, duration REAL, result TEXT, chunks INTEGER, PRIMARY KEY (job_id, attempt));
CREATE INDEX attempts_state ON attempts(state);
CREATE TABLE output (job_id TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
  stream TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job_id, attempt, seq));
CREATE TABLE agents (name TEXT PRIMARY KEY, transport TEXT NOT NULL, capabilities TEXT NOT NULL DEFAULT '{}',
  state TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
"""

_REQUESTS = """
CREATE TABLE definitions (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, namespace TEXT NOT NULL,
  expanded TEXT NOT NULL, sources TEXT NOT NULL DEFAULT '[]', git TEXT, stored_at REAL NOT NULL);
CREATE TABLE rscript_texts (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, text TEXT NOT NULL,
  stored_at REAL NOT NULL);
CREATE TABLE requests (
  id TEXT PRIMARY KEY, workflow TEXT NOT NULL, user TEXT NOT NULL, number INTEGER NOT NULL,
  definition TEXT NOT NULL REFERENCES definitions(sha256), namespace TEXT NOT NULL,
  params TEXT NOT NULL DEFAULT '{}', priority INTEGER NOT NULL DEFAULT 0,
  approval_required INTEGER NOT NULL, scripts TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, error TEXT,
  failures TEXT NOT NULL DEFAULT '[]', UNIQUE (workflow, user, number));
CREATE INDEX requests_state ON requests(state);
CREATE TABLE request_stages (
  request TEXT NOT NULL REFERENCES requests(id), stage TEXT NOT NULL, position INTEGER NOT NULL,
  state TEXT NOT NULL, error TEXT, started_at REAL, ended_at REAL, PRIMARY KEY (request, stage));
CREATE TABLE stage_inputs (
  request TEXT NOT NULL, stage TEXT NOT NULL, input TEXT NOT NULL, seq INTEGER NOT NULL,
  path TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL, batch TEXT, job TEXT,
  allocations INTEGER NOT NULL DEFAULT 0, reason TEXT, PRIMARY KEY (request, stage, input));
CREATE INDEX stage_inputs_batch ON stage_inputs(batch);
CREATE TABLE stage_batches (
  id TEXT PRIMARY KEY, request TEXT NOT NULL REFERENCES requests(id), stage TEXT NOT NULL,
  job TEXT UNIQUE, inputs TEXT NOT NULL DEFAULT '[]', output_dir TEXT, state TEXT NOT NULL,
  stop TEXT, outcome TEXT, error TEXT, created_at REAL NOT NULL, settled_at REAL);
CREATE INDEX stage_batches_request ON stage_batches(request, state);
CREATE TABLE catalog (path TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}', added_at REAL NOT NULL);
CREATE TABLE products (
  id TEXT PRIMARY KEY, request TEXT NOT NULL REFERENCES requests(id), stage TEXT NOT NULL,
  batch TEXT NOT NULL, job TEXT NOT NULL, path TEXT NOT NULL, type TEXT NOT NULL,
  size INTEGER NOT NULL, sha256 TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}',
  inputs TEXT NOT NULL DEFAULT '[]', definition TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX products_request ON products(request, stage);
CREATE INDEX jobs_request ON jobs(request_id);
"""

_TOKENS = """
CREATE TABLE tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('viewer','operator','admin')), sha256 TEXT NOT NULL UNIQUE,
  created_at REAL NOT NULL, created_by TEXT, revoked_at REAL, revoked_by TEXT);
CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL;
"""

# Event ids without AUTOINCREMENT: it made every commit that emitted an event rewrite the
# sqlite_sequence row (one more page in the WAL per commit). The writer numbers events itself,
# after the last committed one, and events are never deleted, so ids stay contiguous and are
# never reused. The table is copied as it is (the same ids), then its index is made again.
_EVENTS_WITHOUT_AUTOINCREMENT = """
CREATE TABLE events_new (id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL,
  subject TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
INSERT INTO events_new (id, at, kind, subject, data) SELECT id, at, kind, subject, data FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_subject ON events(subject, id);
"""

# jobs(parent_id) is already the first column of the UNIQUE (parent_id, call_seq) index, which
# every query by parent (and the foreign key's check) uses; the second index only cost a page
# write per new job.
_DROP_JOBS_PARENT = """
DROP INDEX IF EXISTS jobs_parent;
"""

# The work queue (issue 13; wfe.engine.repository.works): one row per work, its whole payload as
# JSON plus the columns a bucket filters and orders by. ``seq`` orders a bucket (oldest first
# within a priority); ``worker`` is the token that holds a running work's lease.
_WORKS = """
CREATE TABLE works (
  id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, pipeline TEXT NOT NULL, status TEXT NOT NULL,
  priority INTEGER NOT NULL, site TEXT NOT NULL, user TEXT, attempt INTEGER NOT NULL,
  creation REAL NOT NULL, start REAL, stop REAL, worker TEXT, payload TEXT NOT NULL);
CREATE INDEX works_bucket ON works(pipeline, status, priority DESC, seq);
CREATE INDEX works_status ON works(status);
"""

# Tokens gain the ``worker`` role (pull workers: works only). SQLite cannot change a CHECK, so
# the table is copied as it is into one that allows it, and its index made again.
_TOKENS_WORKER_ROLE = """
CREATE TABLE tokens_new (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('viewer','operator','admin','worker')),
  sha256 TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, created_by TEXT, revoked_at REAL,
  revoked_by TEXT);
INSERT INTO tokens_new (id, name, role, sha256, created_at, created_by, revoked_at, revoked_by)
  SELECT id, name, role, sha256, created_at, created_by, revoked_at, revoked_by FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL;
DELETE FROM sqlite_sequence WHERE name = 'tokens' AND NOT EXISTS (SELECT 1 FROM tokens);
"""

# Standing requests (issue 14; wfe.engine.repository.standing): a product records the version
# of the stage that made it (script hash + parameters), why it is no longer current (``stale``:
# its stage's version changed, or its sub-group was run again), whether it is an intermediate
# (purgeable) product, and when its file was purged under disk pressure.
_STANDING_PRODUCTS = """
ALTER TABLE products ADD COLUMN version TEXT;
ALTER TABLE products ADD COLUMN stale TEXT;
ALTER TABLE products ADD COLUMN intermediate INTEGER NOT NULL DEFAULT 0;
ALTER TABLE products ADD COLUMN purged_at REAL;
"""

# Files of finished works copied into the workspace's archive (issue 13, item 3;
# wfe.engine.works.archive): one row per product or plot a work named; ``archived`` is NULL,
# with ``reason``, when the engine could not copy it.
_WORK_FILES = """
CREATE TABLE work_files (
  work_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('product','plot')),
  source TEXT NOT NULL, archived TEXT, size INTEGER, sha256 TEXT, reason TEXT,
  PRIMARY KEY (work_id, kind, source));
"""

# A standing request re-runs an input whose catalog entry changed content (issue 14): the
# stage remembers the sha256 the entry had when the input was taken.
_INPUT_CONTENT = """
ALTER TABLE stage_inputs ADD COLUMN sha256 TEXT;
"""

# A tasklet's ``ctx.work`` call: replayed after a restart, it finds the work it deposited before
# by (parent job, call number), as RScript jobs are found by (parent_id, call_seq).
_WORK_CALLS = """
CREATE TABLE work_calls (parent TEXT NOT NULL, call_seq INTEGER NOT NULL, work_id TEXT NOT NULL,
  PRIMARY KEY (parent, call_seq));
"""

# An attempt records what it ran with (issue 16): the requirements its stage's on_retry
# rules had changed by then (memory), as JSON; NULL for attempts recorded before.
_ATTEMPT_RAN_WITH = """
ALTER TABLE attempts ADD COLUMN ran_with TEXT;
"""

#: Every migration ever, in order. Append only: the position is the schema version.
MIGRATIONS: list[str] = [
    _CORE,  # 1: events, counters, jobs, attempts, output, agents
    _REQUESTS,  # 2: definitions, requests, stages, inputs, batches, catalog, products
    _TOKENS,  # 3: console tokens (sha256 of each; engine/tokens.py)
    _EVENTS_WITHOUT_AUTOINCREMENT,  # 4: events numbered by the writer alone
    _DROP_JOBS_PARENT,  # 5: one index less to write per job
    _WORKS,  # 6: the work queue's buckets (works)
    _TOKENS_WORKER_ROLE,  # 7: tokens may have the worker role
    _STANDING_PRODUCTS,  # 8: products' stage version, staleness, lifetime and purge
    _WORK_FILES,  # 9: finished works' products and plots as archived
    _INPUT_CONTENT,  # 10: the content hash of a catalog input when it was taken
    _WORK_CALLS,  # 11: the works tasklets deposited, by (parent job, call number)
    _ATTEMPT_RAN_WITH,  # 12: what an attempt ran with (memory after on_retry)
    PILOTS_SCHEMA,  # 13: the batch jobs pilot factories submitted (engine/repository/pilots.py)
    EXECUTIONS_SCHEMA,  # 14: simulated executions and their figures (engine/repository/executions.py)
    BROADCASTS_SCHEMA,  # 15: which broadcast each ctx.publish call made (repository/broadcasts.py)
    REPLICAS_SCHEMA,  # catalog entries' replicas; the replicas an attempt got (repository/replicas.py)
]


def schema_version(conn: sqlite3.Connection) -> int:
    """Return how many migrations the database has had (``PRAGMA user_version``)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection, migrations: list[str] | None = None) -> int:
    """Apply the migrations the database lacks, atomically; return the new schema version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no transaction open.
    Raises ``SchemaTooNew`` for a database newer than the code, and ``RepositoryError`` when a
    migration fails, in which case nothing was changed.
    """
    scripts = MIGRATIONS if migrations is None else migrations
    known = len(scripts)
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > known:
            raise SchemaTooNew(
                f"repository schema version {current} is newer than this wfe ({known}): upgrade wfe"
            )
        for number in range(current + 1, known + 1):
            try:
                for statement in split_statements(scripts[number - 1]):
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise RepositoryError(f"schema migration {number} failed: {exc}") from exc
        if known != current:
            conn.execute(f"PRAGMA user_version = {known:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return known


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (triggers with ``BEGIN ... END`` stay whole)."""
    statements: list[str] = []
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statement = script[start : end + 1].strip()
            if statement != ";":
                statements.append(statement)
            start = end + 1
    rest = script[start:].strip()
    if rest:
        if not sqlite3.complete_statement(rest + ";"):
            raise RepositoryError(f"incomplete SQL statement in migration: {rest[:60]!r}")
        statements.append(rest)
    return statements
