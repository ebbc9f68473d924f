"""What the mediator reads from the registry database, read the way it reads it.

The mediator opens the database once and keeps the connection: a file replaced by rename is not
seen, one updated in place is. It looks VMs up by `vm_id` and reads at most 64 rows, ordered by
pool, priority (high first) and vm_id. Values are taken as the SQLite C API's
`sqlite3_column_int` gives them: NULL is 0, a REAL is truncated, TEXT gives its leading integer,
and only the low 32 bits are kept (signed).
"""

import os
import sqlite3

from urllib.parse import quote

MAX_VMS = 64

# At start the mediator loads the rate limits only.
START_QUERY = ("SELECT vm_id, max_jobs_per_sec, max_queue_depth FROM vms "
               "ORDER BY pool_id, priority DESC, vm_id LIMIT %d" % MAX_VMS)
START_FIELDS = ("max_jobs_per_sec", "max_queue_depth")

# RELOAD_CONFIG loads rate limits and quarantine (and the weight and error count in the same row).
RELOAD_QUERY = ("SELECT vm_id, weight, max_jobs_per_sec, max_queue_depth, quarantined, error_count "
                "FROM vms ORDER BY pool_id, priority DESC, vm_id LIMIT %d" % MAX_VMS)
RELOAD_FIELDS = ("weight", "max_jobs_per_sec", "max_queue_depth", "quarantined", "error_count")

WEIGHT_QUERY = "SELECT weight FROM vms WHERE vm_id = ?"
DEFAULT_WEIGHT = 50

NOT_CONNECTED = "ERROR: Database not connected\n"
READ_FAILED = "ERROR: Failed to read VM configs from DB\n"

# The tables of the mediator's later design, created at its start when missing (`create_db`).
MEDIATOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')),
    pool_name TEXT NOT NULL,
    description TEXT,
    enabled INTEGER DEFAULT 1 CHECK(enabled IN (0,1)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
INSERT OR IGNORE INTO pools (pool_id, pool_name) VALUES ('A', 'Pool A'), ('B', 'Pool B');
CREATE TABLE IF NOT EXISTS vms (
    vm_id INTEGER NOT NULL UNIQUE,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL CHECK(pool_id IN ('A','B')) REFERENCES pools(pool_id),
    priority INTEGER NOT NULL CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    weight INTEGER NOT NULL DEFAULT 50,
    max_jobs_per_sec INTEGER NOT NULL DEFAULT 0,
    max_queue_depth INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0
);
"""


class ConfigError(Exception):
    """A load that failed; `text` is the mediator's answer for it."""

    def __init__(self, text, detail):
        Exception.__init__(self, "%s(%s)" % (text.strip(), detail))
        self.text = text
        self.detail = detail


def c_int(conn, value):
    """`value` as sqlite3_column_int returns it."""
    if value is None:
        return 0
    if not isinstance(value, int):
        value = conn.execute("SELECT CAST(? AS INTEGER)", (value,)).fetchone()[0] or 0
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def open_db(path, create=False):
    """A connection kept for the mediator's lifetime, or None when there is no database.

    Without `create` a missing file stays missing (the connection is tried again later).
    """
    if not create and not os.path.exists(path):
        return None
    mode = "rwc" if create else "rw"
    try:
        conn = sqlite3.connect("file:%s?mode=%s" % (quote(os.path.abspath(path)), mode), uri=True,
                               timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return None
    if create:
        conn.executescript(MEDIATOR_SCHEMA)
    return conn


def _load(conn, query, fields):
    if conn is None:
        raise ConfigError(NOT_CONNECTED, "no database")
    try:
        rows = conn.execute(query).fetchall()
    except sqlite3.Error as e:
        raise ConfigError(READ_FAILED, str(e))
    loaded = {}
    for row in rows:
        config = dict(zip(fields, (c_int(conn, v) for v in row[1:])))
        if "quarantined" in config:
            config["quarantined"] = config["quarantined"] != 0
        loaded[c_int(conn, row[0])] = config
    return loaded


def load_at_start(conn):
    """{vm_id: {max_jobs_per_sec, max_queue_depth}} in the mediator's order; ConfigError."""
    return _load(conn, START_QUERY, START_FIELDS)


def load_on_reload(conn):
    """{vm_id: {weight, max_jobs_per_sec, max_queue_depth, quarantined, error_count}}; ConfigError."""
    return _load(conn, RELOAD_QUERY, RELOAD_FIELDS)


def weight(conn, vm_id):
    """The weight the mediator would use for a job of `vm_id` now (≤ 0 counts as 50), or None
    when it cannot read one (no database, no such column, no such row)."""
    if conn is None:
        return None
    try:
        row = conn.execute(WEIGHT_QUERY, (vm_id,)).fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    value = c_int(conn, row[0])
    return value if value > 0 else DEFAULT_WEIGHT
