//! The SQLite registry: schema, migrations from the older tools' databases, and the queries.
//!
//! Writers use WAL, a busy timeout and `BEGIN IMMEDIATE`, so concurrent registrations from several
//! processes serialise instead of failing with `database is locked`, and the next free vm_id is
//! chosen inside the same write transaction that uses it.

use crate::error::{Error, Result, VmRef};
use crate::model::{sqlite_time_to_rfc3339, Controls, Pool, Priority, Registration};
use crate::report::{ByPriority, PoolInfo};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PRAGMA user_version` of the schema this code writes.
pub const SCHEMA_VERSION: i64 = 4;

/// Long enough to queue behind other writers that are waiting on XAPI.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a writer waits for the lock before saying that it is waiting.
const QUIET_WAIT: Duration = Duration::from_secs(1);

/// Told, once per write, that the registry is locked by another process and the write waits.
pub type Waiter = fn(&Path);

const CREATE_POOLS: &str = "CREATE TABLE IF NOT EXISTS pools (
    pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')),
    pool_name TEXT NOT NULL,
    description TEXT,
    enabled INTEGER DEFAULT 1 CHECK(enabled IN (0,1)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)";

const CREATE_VMS: &str = "CREATE TABLE IF NOT EXISTS vms (
    vm_id INTEGER NOT NULL UNIQUE,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL CHECK(pool_id IN ('A','B')) REFERENCES pools(pool_id),
    priority INTEGER NOT NULL CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    name_chosen INTEGER NOT NULL DEFAULT 0 CHECK(name_chosen IN (0,1))
)";

/// Schema 2: whether the user chose the stored name (sync then keeps it).
const NAME_CHOSEN: (&str, &str) = (
    "name_chosen",
    "INTEGER NOT NULL DEFAULT 0 CHECK(name_chosen IN (0,1))",
);

/// Schema 3: what this file is in the pool (`role`: primary or replica) and the mirror
/// generation it holds. A table of its own, so the mediator's tables stay as they are.
const CREATE_META: &str = "CREATE TABLE IF NOT EXISTS registry_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)";

/// Schema 4: the per-VM scheduling controls the mediator reads by vm_id (`MEDIATOR.md`).
pub const MEDIATOR_COLUMNS: [(&str, &str); 5] = [
    ("weight", "INTEGER NOT NULL DEFAULT 50"),
    ("max_jobs_per_sec", "INTEGER NOT NULL DEFAULT 0"),
    ("max_queue_depth", "INTEGER NOT NULL DEFAULT 0"),
    ("quarantined", "INTEGER NOT NULL DEFAULT 0"),
    ("error_count", "INTEGER NOT NULL DEFAULT 0"),
];

const SEED_POOLS: &str =
    "INSERT OR IGNORE INTO pools (pool_id, pool_name) VALUES ('A', 'Pool A'), ('B', 'Pool B')";

const INDEXES: &str = "CREATE INDEX IF NOT EXISTS idx_vm_pool ON vms(pool_id);
    CREATE INDEX IF NOT EXISTS idx_vm_priority ON vms(priority);";

/// The registry database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Where the pre-migration copy went, when this open migrated the database.
    backup: Option<PathBuf>,
    waiter: Option<Waiter>,
    /// How long a write waits for another process's lock.
    busy_timeout: Duration,
    /// No registry on disk yet: this one is empty and in memory, and the first
    /// [`Store::write`] creates the file (see [`Store::open_for_change`]).
    create_on_write: bool,
}

/// Filters of `list-vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub pool: Option<Pool>,
    pub priority: Option<Priority>,
    /// Only quarantined VMs.
    pub quarantined: bool,
}

/// A change of the mediator's controls (`None`: unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlChange {
    pub weight: Option<u32>,
    pub max_jobs_per_sec: Option<u32>,
    pub max_queue_depth: Option<u32>,
    pub quarantined: Option<bool>,
}

/// The values a registration may change to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewValues {
    pub vm_name: Option<String>,
    pub pool: Pool,
    pub priority: Priority,
    pub vm_id: u32,
}

impl Store {
    /// Opens (creating if needed) and migrates the registry at `path`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_waiting(path, BUSY_TIMEOUT)
    }

    /// [`Store::open`], waiting at most `lock_timeout` for another process's lock, then failing
    /// with [`Error::Locked`]; that is also how long a write waits for the lock.
    pub fn open_waiting(path: &Path, lock_timeout: Duration) -> Result<Store> {
        let db_err = |e: rusqlite::Error| locked_or_database(path, e, lock_timeout);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                create_private_dir(dir).map_err(|e| Error::DatabaseDir {
                    path: path.to_path_buf(),
                    dir: dir.to_path_buf(),
                    source: e,
                })?;
            }
        }
        create_private_file(path).map_err(|e| Error::CreateFile {
            path: path.to_path_buf(),
            file: path.to_path_buf(),
            source: e,
        })?;
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(lock_timeout).map_err(db_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            backup: None,
            waiter: None,
            busy_timeout: lock_timeout,
            create_on_write: false,
        };
        store.migrate(true)?;
        store.ensure_wal()?;
        Ok(store)
    }

    /// For a command that may change the registry: [`Store::open_waiting`] when the registry
    /// exists, otherwise an empty one whose first [`Store::write`] creates it. A change refused
    /// before it takes the write lock (a register of a VM that does not exist) then leaves no
    /// file or directory behind, as a read does.
    pub fn open_for_change(path: &Path, lock_timeout: Duration) -> Result<Store> {
        let absent = match std::fs::metadata(path) {
            Ok(m) => m.is_file() && m.len() == 0,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if absent {
            // A path that can never exist fails as the write would have.
            if let Ok(mut store) = Store::open_read_waiting(path, lock_timeout) {
                store.busy_timeout = lock_timeout;
                store.create_on_write = true;
                return Ok(store);
            }
        }
        Store::open_waiting(path, lock_timeout)
    }

    /// Opens the registry at `path` for reading only: no file or directory is left behind and
    /// nothing is written, so reading needs no write access. A registry that does not exist
    /// (or an empty file) reads as an empty one; a registry of the older tools that this
    /// process may not migrate is read through a migrated copy in memory.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn open_read(path: &Path) -> Result<Store> {
        Store::open_read_waiting(path, BUSY_TIMEOUT)
    }

    /// [`Store::open_read`], waiting at most `lock_timeout` for a lock that keeps readers out
    /// (an older tool's writer, a connection in exclusive locking mode), then failing with
    /// [`Error::Locked`].
    pub fn open_read_waiting(path: &Path, lock_timeout: Duration) -> Result<Store> {
        let db_err = |e: rusqlite::Error| locked_or_database(path, e, lock_timeout);
        // An empty file is an empty database to SQLite, and our own registry between its
        // creation and its first commit: no registry yet, as when there is no file.
        let empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
        if empty {
            return Store::in_memory(path, None);
        }
        if !path.exists() {
            // Nothing registered yet; but a path that can never exist is a mistake to report.
            if let Some(blocker) = path.ancestors().skip(1).find(|a| a.exists()) {
                if !blocker.is_dir() {
                    return Err(Error::NotADirectory {
                        path: path.to_path_buf(),
                        file: blocker.to_path_buf(),
                    });
                }
            }
            return Store::in_memory(path, None);
        }
        // Reading a WAL database creates its -wal and -shm files, and only a connection that
        // may write removes them as it closes. So who may write the file reads through such a
        // connection (told not to write) when they are not there yet, leaving the directory as
        // it was. When they are there, another connection (or a crashed one) has them: a
        // read-only connection leaves them, and what they hold, as they are.
        let writable = is_writable(path);
        if writable && side_path(path, "-journal").exists() {
            // A writer killed while creating or migrating the file (before it is WAL) leaves a
            // hot journal, which a read-only connection cannot roll back: it would read the
            // half-written file. Whoever may write rolls it back, as the next writer would.
            let conn = Connection::open(path).map_err(db_err)?;
            conn.busy_timeout(lock_timeout).map_err(db_err)?;
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(db_err)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = if writable && !side_path(path, "-wal").exists() {
            let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, rw).map_err(db_err)?;
            conn.pragma_update(None, "query_only", true)
                .map_err(db_err)?;
            conn
        } else {
            Connection::open_with_flags(path, flags).map_err(db_err)?
        };
        conn.busy_timeout(lock_timeout).map_err(db_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            backup: None,
            waiter: None,
            busy_timeout: lock_timeout,
            create_on_write: false,
        };
        let version = match store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
        {
            Ok(v) => v,
            // A WAL database needs its -shm file to be read. With no connection open there is
            // none, and a user who may not write the directory cannot create it; then nobody
            // is writing either (a writer would have created it), so read the file as it is.
            Err(e) if is_readonly(&e) && !shm_path(path).exists() => {
                store.conn = Connection::open_with_flags(
                    immutable_uri(path),
                    flags | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(db_err)?;
                store.user_version()?
            }
            Err(e) => return Err(db_err(e)),
        };
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(store);
        }
        // An older tool's database: migrate it for real when we may, as a write would.
        if writable {
            drop(store);
            return Store::open_waiting(path, lock_timeout);
        }
        Store::in_memory(path, Some(&store.conn))
    }

    /// A registry in memory, with the schema, and the rows of `from` when given (migrated).
    fn in_memory(path: &Path, from: Option<&Connection>) -> Result<Store> {
        let db_err = |e: rusqlite::Error| Error::database(path, e);
        let mut conn = Connection::open_in_memory().map_err(db_err)?;
        if let Some(src) = from {
            let backup = rusqlite::backup::Backup::new(src, &mut conn).map_err(db_err)?;
            backup
                .run_to_completion(1000, Duration::from_millis(10), None)
                .map_err(db_err)?;
        }
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            backup: None,
            waiter: None,
            busy_timeout: BUSY_TIMEOUT,
            create_on_write: false,
        };
        // The file is not touched, so there is nothing to back up.
        store.migrate(false)?;
        Ok(store)
    }

    /// How long a write waits for another process's lock (default: a minute).
    pub fn set_busy_timeout(&mut self, t: Duration) {
        self.busy_timeout = t;
        let _ = self.conn.busy_timeout(t);
    }

    /// Says so when other users may read or write the registry file (older tools and a loose
    /// umask created it 0644); `None` for a private file or one not on disk.
    #[cfg(unix)]
    pub fn exposure(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "the registry {} is open to other users (mode {mode:04o}); make it private: \
                 chmod 600 {}",
                self.path.display(),
                self.path.display()
            )
        })
    }

    #[cfg(not(unix))]
    pub fn exposure(&self) -> Option<String> {
        None
    }

    /// Who to tell when a write has to wait for another process's lock.
    pub fn set_waiter(&mut self, waiter: Option<Waiter>) {
        self.waiter = waiter;
    }

    /// WAL lets the mediator read while we write; it is a property of the file, set once. The
    /// switch needs the database to itself, and SQLite reports a refusal by answering with the
    /// old mode rather than waiting, so processes opening a new registry together retry here.
    fn ensure_wal(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + self.busy_timeout;
        loop {
            let mode = self
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0));
            match mode {
                Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(_) | Err(rusqlite::Error::SqliteFailure(_, _))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(mode) => {
                    return Err(Error::NotWal {
                        path: self.path.clone(),
                        mode,
                    })
                }
                Err(e) => return Err(self.db_err(e)),
            }
        }
    }

    /// The backup written by this open's migration, if it migrated.
    pub fn migration_backup(&self) -> Option<&Path> {
        self.backup.as_deref()
    }

    pub(crate) fn db_err(&self, e: rusqlite::Error) -> Error {
        locked_or_database(&self.path, e, self.busy_timeout)
    }

    /// Brings the database to [`SCHEMA_VERSION`]; `backup`: copy it beside itself first.
    fn migrate(&mut self, backup: bool) -> Result<()> {
        let version = self.user_version()?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let path = self.path.clone();
        let waited = self.busy_timeout;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| locked_or_database(&path, e, waited))?;
        // Another process may have migrated while we waited for the write lock.
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| locked_or_database(&path, e, waited))?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let has_vms = table_exists(&tx, "vms").map_err(|e| db_error(&path, e))?;
        let has_pools = table_exists(&tx, "pools").map_err(|e| db_error(&path, e))?;
        if backup && (has_vms || has_pools) {
            self.backup = Some(write_backup(&tx, &path)?);
        }
        migrate_to_current(&tx, version).map_err(|e| Error::Migration {
            path: path.clone(),
            version: SCHEMA_VERSION,
            source: e,
        })?;
        tx.commit().map_err(|e| db_error(&path, e))?;
        Ok(())
    }

    fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.db_err(e))
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`): the registry is locked for other writers
    /// until it is committed or dropped.
    ///
    /// When another process holds the lock, the waiter is told after a second, and the wait
    /// ends after the busy timeout (a minute) with [`Error::Locked`].
    pub fn write(&mut self) -> Result<WriteTx<'_>> {
        if self.create_on_write {
            let mut created = Store::open_waiting(&self.path, self.busy_timeout)?;
            created.waiter = self.waiter;
            *self = created;
        }
        let path = self.path.clone();
        let started = std::time::Instant::now();
        let mut told = false;
        self.conn
            .busy_timeout(QUIET_WAIT)
            .map_err(|e| db_error(&path, e))?;
        let begun = loop {
            match rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate) {
                Err(e) if is_busy(&e) => {
                    let waited = started.elapsed();
                    if waited >= self.busy_timeout {
                        break Err(Error::Locked {
                            path: path.clone(),
                            waited_s: waited.as_secs(),
                        });
                    }
                    if !told {
                        told = true;
                        if let Some(tell) = self.waiter {
                            tell(&path);
                        }
                    }
                }
                other => break other.map_err(|e| db_error(&path, e)),
            }
        };
        // Statements inside the transaction keep the long timeout (a checkpoint may hold them).
        let restored = self.conn.busy_timeout(BUSY_TIMEOUT);
        let tx = begun?;
        restored.map_err(|e| db_error(&path, e))?;
        Ok(WriteTx { tx, path })
    }

    pub fn get(&self, vm_uuid: &str) -> Result<Option<Registration>> {
        get(&self.conn, vm_uuid).map_err(|e| self.db_err(e))
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Registration>> {
        list(&self.conn, filter).map_err(|e| self.db_err(e))
    }

    /// Registrations whose stored name is exactly `name`.
    pub fn find_by_name(&self, name: &str) -> Result<Vec<Registration>> {
        let all = self.list(&ListFilter::default())?;
        Ok(all
            .into_iter()
            .filter(|r| r.vm_name.as_deref() == Some(name))
            .collect())
    }

    pub fn pools(&self) -> Result<Vec<PoolInfo>> {
        pools(&self.conn).map_err(|e| self.db_err(e))
    }

    /// The role and generation `path` records and how many rows it holds, read without opening
    /// it as a registry: it is read `immutable`, so nothing is created, migrated, or written beside
    /// it, and a file that is not ours (an older tool's, the mediator's) stays byte for byte as it
    /// is. What is still in the WAL is not seen (refresh checkpoints after writing); callers
    /// decide again inside their write transaction.
    pub fn peek(path: &Path) -> Result<(Meta, usize)> {
        if !path.exists() {
            return Ok((Meta::default(), 0));
        }
        let conn = Connection::open_with_flags(
            immutable_uri(path),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| Error::database(path, e))?;
        let rows = if table_exists(&conn, "vms").map_err(|e| Error::database(path, e))? {
            conn.query_row("SELECT count(*) FROM vms", [], |r| r.get::<_, i64>(0))
                .map_err(|e| Error::database(path, e))?
        } else {
            0
        };
        let meta = meta(&conn).map_err(|e| Error::database(path, e))?;
        Ok((meta, usize::try_from(rows).unwrap_or(0)))
    }

    /// Copies what the WAL holds into the file, as far as readers allow, so that [`Store::peek`]
    /// sees it. Best effort: a reader that holds an old snapshot only delays it.
    pub fn checkpoint(&self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }

    /// The declared type of the `weight` column (`REAL` in databases made by the older SQL file).
    pub fn weight_type(&self) -> Result<String> {
        let mut stmt = self
            .conn
            .prepare("SELECT type FROM pragma_table_info('vms') WHERE name = 'weight'")
            .map_err(|e| self.db_err(e))?;
        let t: Option<String> = stmt
            .query_row([], |r| r.get(0))
            .optional()
            .map_err(|e| self.db_err(e))?;
        Ok(t.unwrap_or_default().to_ascii_uppercase())
    }

    /// The role and generation this file records (schema 3).
    pub fn meta(&self) -> Result<Meta> {
        meta(&self.conn).map_err(|e| self.db_err(e))
    }

    /// Every row as the mirror carries it, by lower-case uuid.
    pub fn rows_json(&self) -> Result<BTreeMap<String, JsonMap>> {
        rows_json(&self.conn).map_err(|e| self.db_err(e))
    }

    /// [`rows_json`](Self::rows_json) one row at a time, in uuid order, for a caller that keeps
    /// less of each row than the whole map (a scan of a large pool).
    pub fn each_row_json(&self, each: &mut dyn FnMut(String, JsonMap)) -> Result<()> {
        each_row_json_where(&self.conn, None, each).map_err(|e| self.db_err(e))
    }

    /// Copies the registry beside itself as `<file>.<tag>-<time>.bak`.
    pub fn backup_as(&self, tag: &str) -> Result<PathBuf> {
        write_backup_named(&self.conn, &self.path, tag)
    }

    #[cfg(test)]
    pub fn next_free_vm_id(&self) -> Result<Option<u32>> {
        next_free_vm_id(&self.conn).map_err(|e| self.db_err(e))
    }
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::database(path, e)
}

/// SQLite's "database is locked" after waiting `waited` is [`Error::Locked`], which says who to
/// look for; any other failure is a database error.
fn locked_or_database(path: &Path, e: rusqlite::Error, waited: Duration) -> Error {
    if is_busy(&e) {
        Error::Locked {
            path: path.to_path_buf(),
            waited_s: waited.as_secs(),
        }
    } else {
        Error::database(path, e)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn is_readonly(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    )
}

fn shm_path(path: &Path) -> PathBuf {
    side_path(path, "-shm")
}

/// `path` with `suffix` appended (SQLite's `-shm`, `-wal`, `-journal` beside the file).
fn side_path(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// `file:` URI of `path` opened immutable (no locks, no -shm): SQLite's way to read a file
/// nobody may change.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' | b' ' => uri.push_str(&format!("%{b:02X}")),
            0x80.. => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(char::from(*b)),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// Whether this process may write `path` (and so migrate it in place).
fn is_writable(path: &Path) -> bool {
    std::fs::OpenOptions::new().append(true).open(path).is_ok()
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates `path` empty with mode 0600 whatever the umask, unless it exists. SQLite gives the
/// -wal and -shm files the mode of the database, so they are private too; the mediator runs as
/// root and still reads them.
#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// A write transaction on the registry. Dropping it without `commit` rolls back.
pub struct WriteTx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: PathBuf,
}

impl WriteTx<'_> {
    fn err(&self, e: rusqlite::Error) -> Error {
        db_error(&self.path, e)
    }

    pub fn get(&self, vm_uuid: &str) -> Result<Option<Registration>> {
        get(&self.tx, vm_uuid).map_err(|e| self.err(e))
    }

    /// The registration of `vm_uuid` as it is under the write lock, or `NOT_REGISTERED` naming
    /// `vm`: a change looks the VM up before it takes the lock, and a remove that committed in
    /// between must make it fail, not act on a row that is gone.
    pub fn registered(&self, vm_uuid: &str, vm: &VmRef) -> Result<Registration> {
        self.get(vm_uuid)?
            .ok_or_else(|| Error::NotRegistered { vm: vm.clone() })
    }

    /// The registration holding `vm_id`, if any.
    pub fn owner_of(&self, vm_id: u32) -> Result<Option<Registration>> {
        self.tx
            .query_row(
                &format!("{SELECT_REG} WHERE vm_id = ?1"),
                [i64::from(vm_id)],
                row_to_registration,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn next_free_vm_id(&self) -> Result<Option<u32>> {
        next_free_vm_id(&self.tx).map_err(|e| self.err(e))
    }

    /// Fails with `VM_ID_IN_USE` (naming the owner and the next free id) unless `vm_id` is free
    /// or already `vm_uuid`'s.
    pub fn check_vm_id_free(&self, vm_id: u32, vm_uuid: &str) -> Result<()> {
        match self.owner_of(vm_id)? {
            Some(owner) if owner.vm_uuid != vm_uuid => Err(Error::VmIdInUse {
                vm_id,
                owner: VmRef {
                    vm_uuid: owner.vm_uuid,
                    vm_name: owner.vm_name,
                },
                next_free: self.next_free_vm_id()?,
            }),
            _ => Ok(()),
        }
    }

    pub fn insert(&self, vm_uuid: &str, v: &NewValues) -> Result<Registration> {
        self.tx
            .execute(
                "INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
                params![
                    i64::from(v.vm_id),
                    vm_uuid,
                    v.vm_name,
                    v.pool.as_str(),
                    v.priority.as_int()
                ],
            )
            .map_err(|e| self.err(e))?;
        self.must_get(vm_uuid)
    }

    /// Updates the registry fields of the row stored as `vm_uuid` (normalising its uuid to lower
    /// case); every other column (the mediator's) is untouched.
    pub fn update(&self, vm_uuid: &str, v: &NewValues) -> Result<Registration> {
        self.tx
            .execute(
                "UPDATE vms SET vm_id = ?1, vm_name = ?2, pool_id = ?3, priority = ?4,
                 vm_uuid = lower(vm_uuid), updated_at = CURRENT_TIMESTAMP WHERE vm_uuid = ?5",
                params![
                    i64::from(v.vm_id),
                    v.vm_name,
                    v.pool.as_str(),
                    v.priority.as_int(),
                    vm_uuid
                ],
            )
            .map_err(|e| self.err(e))?;
        self.must_get(&vm_uuid.to_ascii_lowercase())
    }

    /// Marks the stored name as the user's choice.
    pub fn set_name_chosen(&self, vm_uuid: &str) -> Result<()> {
        self.tx
            .execute(
                "UPDATE vms SET name_chosen = 1 WHERE vm_uuid = ?1",
                [vm_uuid],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_name(&self, vm_uuid: &str, name: &str) -> Result<()> {
        self.tx
            .execute(
                "UPDATE vms SET vm_name = ?1, updated_at = CURRENT_TIMESTAMP WHERE vm_uuid = ?2",
                params![name, vm_uuid],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Changes the mediator's controls of the row; `None` leaves a value as it is. Clearing a
    /// quarantine also zeroes `error_count`, as the mediator's admin tool always did.
    pub fn set_controls(&self, vm_uuid: &str, c: &ControlChange) -> Result<Registration> {
        self.tx
            .execute(
                "UPDATE vms SET weight = COALESCE(?1, weight),
                   max_jobs_per_sec = COALESCE(?2, max_jobs_per_sec),
                   max_queue_depth = COALESCE(?3, max_queue_depth),
                   quarantined = COALESCE(?4, quarantined),
                   error_count = CASE WHEN ?4 = 0 THEN 0 ELSE error_count END,
                   updated_at = CURRENT_TIMESTAMP
                 WHERE vm_uuid = ?5",
                params![
                    c.weight.map(i64::from),
                    c.max_jobs_per_sec.map(i64::from),
                    c.max_queue_depth.map(i64::from),
                    c.quarantined.map(i64::from),
                    vm_uuid
                ],
            )
            .map_err(|e| self.err(e))?;
        self.must_get(vm_uuid)
    }

    pub fn delete(&self, vm_uuid: &str) -> Result<bool> {
        let n = self
            .tx
            .execute("DELETE FROM vms WHERE vm_uuid = ?1", [vm_uuid])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn must_get(&self, vm_uuid: &str) -> Result<Registration> {
        self.get(vm_uuid)?.ok_or_else(|| {
            Error::Internal(format!("row {vm_uuid} vanished inside its transaction"))
        })
    }

    pub fn meta(&self) -> Result<Meta> {
        meta(&self.tx).map_err(|e| self.err(e))
    }

    /// Copies the registry as it was before this transaction beside itself.
    pub fn backup_as(&self, tag: &str) -> Result<PathBuf> {
        write_backup_named(&self.tx, &self.path, tag)
    }

    pub fn set_meta(&self, role: Role, generation: u64) -> Result<()> {
        self.tx
            .execute(
                "INSERT OR REPLACE INTO registry_meta (key, value) VALUES ('role', ?1), \
                 ('generation', ?2)",
                params![role.as_str(), generation.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The row of `vm_uuid` as the mirror carries it.
    pub fn row_json(&self, vm_uuid: &str) -> Result<Option<JsonMap>> {
        Ok(rows_json_where(&self.tx, Some(vm_uuid))
            .map_err(|e| self.err(e))?
            .into_values()
            .next())
    }

    pub fn rows_json(&self) -> Result<BTreeMap<String, JsonMap>> {
        rows_json(&self.tx).map_err(|e| self.err(e))
    }

    /// Every pools row, every column.
    pub fn pools_json(&self) -> Result<Vec<JsonMap>> {
        pools_json(&self.tx).map_err(|e| self.err(e))
    }

    /// Makes the registry hold exactly `rows` (and the pool rows in `pools`, when given): rows
    /// are deleted and inserted again inside this transaction, so a reader sees the old or the
    /// new registry, never a mix. Columns the mirror does not carry take the table's default;
    /// keys the table has no column for are ignored. A row the table refuses (two VMs with one
    /// vm_id, a value a CHECK refuses) is left out and returned with the reason.
    pub fn replace_all(
        &self,
        rows: &[(String, JsonMap)],
        pools: Option<&[JsonMap]>,
    ) -> Result<Vec<(String, String)>> {
        self.tx
            .execute("DELETE FROM vms", [])
            .map_err(|e| self.err(e))?;
        let refused = self.insert_rows(rows)?;
        self.set_pools(pools)?;
        Ok(refused)
    }

    /// Replaces the rows of the VMs listed (`None`: the VM has no row any more), leaving every
    /// other row alone; as [`WriteTx::replace_all`] otherwise.
    pub fn replace_some(
        &self,
        rows: &[(String, Option<JsonMap>)],
        pools: Option<&[JsonMap]>,
    ) -> Result<Vec<(String, String)>> {
        for (uuid, _) in rows {
            self.tx
                .execute("DELETE FROM vms WHERE lower(vm_uuid) = lower(?1)", [uuid])
                .map_err(|e| self.err(e))?;
        }
        let present: Vec<(String, JsonMap)> = rows
            .iter()
            .filter_map(|(u, r)| r.clone().map(|r| (u.clone(), r)))
            .collect();
        let refused = self.insert_rows(&present)?;
        self.set_pools(pools)?;
        Ok(refused)
    }

    fn insert_rows(&self, rows: &[(String, JsonMap)]) -> Result<Vec<(String, String)>> {
        let err = |e| self.err(e);
        let vm_cols = column_names(&self.tx, "vms").map_err(err)?;
        let mut refused = Vec::new();
        for (uuid, row) in rows {
            let mut cols = vec!["vm_uuid".to_string()];
            let mut vals = vec![rusqlite::types::Value::Text(uuid.clone())];
            for (k, v) in row {
                let col = from_mirror_key(k);
                if col == "vm_uuid" || !vm_cols.iter().any(|c| c == col) {
                    continue;
                }
                cols.push(col.to_string());
                vals.push(to_sql_value(col, v));
            }
            let sql = format!(
                "INSERT INTO vms ({}) VALUES ({})",
                cols.join(", "),
                vec!["?"; cols.len()].join(", ")
            );
            match self.tx.execute(&sql, rusqlite::params_from_iter(vals)) {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(f, msg))
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    refused.push((uuid.clone(), msg.unwrap_or_else(|| f.to_string())));
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(refused)
    }

    fn set_pools(&self, pools: Option<&[JsonMap]>) -> Result<()> {
        let err = |e| self.err(e);
        if let Some(pools) = pools {
            let pool_cols = column_names(&self.tx, "pools").map_err(err)?;
            for row in pools {
                let Some(id) = row.get("pool_id").and_then(|v| v.as_str()) else {
                    continue;
                };
                let pairs: Vec<(&String, &serde_json::Value)> = row
                    .iter()
                    .filter(|(k, _)| *k != "pool_id" && pool_cols.contains(k))
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                let set: Vec<String> = pairs.iter().map(|(k, _)| format!("{k} = ?")).collect();
                let mut vals: Vec<rusqlite::types::Value> =
                    pairs.iter().map(|(k, v)| to_sql_value(k, v)).collect();
                vals.push(rusqlite::types::Value::Text(id.to_string()));
                // Only the two pools exist; a row for another id is not ours to add.
                self.tx
                    .execute(
                        &format!("UPDATE pools SET {} WHERE pool_id = ?", set.join(", ")),
                        rusqlite::params_from_iter(vals),
                    )
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        let path = self.path;
        self.tx.commit().map_err(|e| db_error(&path, e))
    }
}

const SELECT_REG: &str = "SELECT vm_uuid, vm_name, vm_id, pool_id, priority, created_at, \
     updated_at, name_chosen, weight, max_jobs_per_sec, max_queue_depth, quarantined, error_count \
     FROM vms";

fn row_to_registration(r: &rusqlite::Row<'_>) -> rusqlite::Result<Registration> {
    let pool: String = r.get(3)?;
    let priority: i64 = r.get(4)?;
    let bad = |col: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into())
    };
    Ok(Registration {
        vm_uuid: r.get(0)?,
        vm_name: r.get(1)?,
        vm_id: r.get(2)?,
        pool: Pool::parse(&pool).map_err(|_| bad(3, format!("stored pool_id {pool:?}")))?,
        priority: Priority::from_db(priority)
            .ok_or_else(|| bad(4, format!("stored priority {priority}")))?,
        created_at: time_col(r, 5)?,
        updated_at: time_col(r, 6)?,
        name_chosen: r.get::<_, Option<i64>>(7)?.unwrap_or(0) != 0,
        controls: Controls {
            weight: number_col(r, 8)?,
            max_jobs_per_sec: r.get::<_, Option<i64>>(9)?.unwrap_or(0),
            max_queue_depth: r.get::<_, Option<i64>>(10)?.unwrap_or(0),
            quarantined: r.get::<_, Option<i64>>(11)?.unwrap_or(0) != 0,
            error_count: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
        },
    })
}

/// The weight as stored: an integer, or a real in databases made by the older SQL file.
fn number_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<serde_json::Number> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Integer(n) => n.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).unwrap_or_else(|| 0.into()),
        ValueRef::Text(t) => String::from_utf8_lossy(t)
            .trim()
            .parse::<i64>()
            .map_or_else(|_| 0.into(), Into::into),
        ValueRef::Null | ValueRef::Blob(_) => 0.into(),
    })
}

/// Timestamps are text in every known database, but SQLite would let a number in.
fn time_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Text(t) => Some(sqlite_time_to_rfc3339(&String::from_utf8_lossy(t))),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Blob(_) => None,
    })
}

/// The row of `vm_uuid`. The older tools stored uuids as typed, so a row in another case is
/// found too (exact match first, which uses the index).
fn get(conn: &Connection, vm_uuid: &str) -> rusqlite::Result<Option<Registration>> {
    let exact = conn
        .query_row(
            &format!("{SELECT_REG} WHERE vm_uuid = ?1"),
            [vm_uuid],
            row_to_registration,
        )
        .optional()?;
    if exact.is_some() {
        return Ok(exact);
    }
    conn.query_row(
        &format!("{SELECT_REG} WHERE lower(vm_uuid) = lower(?1) ORDER BY vm_uuid LIMIT 1"),
        [vm_uuid],
        row_to_registration,
    )
    .optional()
}

fn list(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<Vec<Registration>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT_REG} WHERE (?1 IS NULL OR pool_id = ?1) AND (?2 IS NULL OR priority = ?2)
           AND (?3 = 0 OR quarantined != 0)
         ORDER BY pool_id, priority DESC, vm_id"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.pool.map(|p| p.as_str()),
            filter.priority.map(|p| p.as_int()),
            i64::from(filter.quarantined)
        ],
        row_to_registration,
    )?;
    rows.collect()
}

fn next_free_vm_id(conn: &Connection) -> rusqlite::Result<Option<u32>> {
    // The lowest id >= 1 not taken: 1 itself, or one past a taken id. Uses the vm_id index.
    let n: Option<i64> = conn.query_row(
        "SELECT MIN(c) FROM (
             SELECT 1 AS c WHERE NOT EXISTS (SELECT 1 FROM vms WHERE vm_id = 1)
             UNION ALL
             SELECT v.vm_id + 1 FROM vms v
             WHERE v.vm_id >= 1 AND v.vm_id < 4294967295
               AND NOT EXISTS (SELECT 1 FROM vms w WHERE w.vm_id = v.vm_id + 1))",
        [],
        |r| r.get(0),
    )?;
    Ok(n.and_then(|n| u32::try_from(n).ok()))
}

fn pools(conn: &Connection) -> rusqlite::Result<Vec<PoolInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.pool_id, p.pool_name, p.description, COALESCE(p.enabled, 1),
                COUNT(v.vm_uuid),
                COALESCE(SUM(v.priority = 0), 0), COALESCE(SUM(v.priority = 1), 0),
                COALESCE(SUM(v.priority = 2), 0)
         FROM pools p LEFT JOIN vms v ON v.pool_id = p.pool_id
         GROUP BY p.pool_id ORDER BY p.pool_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let id: String = r.get(0)?;
        Ok((
            id,
            PoolInfo {
                pool_id: Pool::A,
                pool_name: r.get(1)?,
                description: r.get(2)?,
                enabled: r.get::<_, i64>(3)? != 0,
                vm_count: r.get::<_, i64>(4)? as u64,
                by_priority: ByPriority {
                    low: r.get::<_, i64>(5)? as u64,
                    medium: r.get::<_, i64>(6)? as u64,
                    high: r.get::<_, i64>(7)? as u64,
                },
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, mut info) = row?;
        // The CHECK constraint keeps anything but A and B out of the table.
        if let Ok(p) = Pool::parse(&id) {
            info.pool_id = p;
            out.push(info);
        }
    }
    Ok(out)
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn column_names(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    names.collect()
}

/// Copies the database beside itself before a migration, through SQLite's backup API so the
/// copy is consistent even while other readers are active.
fn write_backup(conn: &Connection, path: &Path) -> Result<PathBuf> {
    write_backup_named(conn, path, &format!("pre-v{SCHEMA_VERSION}"))
}

fn write_backup_named(conn: &Connection, path: &Path, tag: &str) -> Result<PathBuf> {
    let stamp: String = conn
        .query_row("SELECT strftime('%Y%m%dT%H%M%SZ', 'now')", [], |r| r.get(0))
        .map_err(|e| db_error(path, e))?;
    let base = format!("{}.{tag}-{stamp}.bak", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    // The backup reads through a second connection: SQLite refuses to back up through the
    // connection holding our write lock, and since we hold that lock, what the second connection
    // reads is exactly the state we are about to migrate.
    let src = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| db_error(path, e))?;
    create_private_file(&target).map_err(|e| Error::CreateFile {
        path: path.to_path_buf(),
        file: target.clone(),
        source: e,
    })?;
    let mut dst = Connection::open(&target).map_err(|e| db_error(&target, e))?;
    {
        let backup =
            rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| db_error(&target, e))?;
        backup
            .run_to_completion(1000, Duration::from_millis(10), None)
            .map_err(|e| db_error(&target, e))?;
    }
    Ok(target)
}

/// Brings a database of the older tools (no `user_version`) to schema 1, inside the caller's
/// transaction. Every row and every column the registry does not own is kept.
fn migrate_to_current(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    if from < 1 {
        migrate_v0_to_v1(conn)?;
    }
    // 1 -> 2: names chosen by the user are marked. Rows from before are not: their names were
    // refreshed by every sync until now, and stay so.
    add_column_if_missing(conn, "vms", NAME_CHOSEN.0, NAME_CHOSEN.1)?;
    // 2 -> 3: no role recorded means a primary of before the mirror (see `pool`).
    conn.execute_batch(CREATE_META)?;
    // 3 -> 4: the mediator's controls, with the mediator's own declarations and defaults; a
    // column already there keeps its type and values (an older SQL file's `weight REAL`).
    for (col, decl) in MEDIATOR_COLUMNS {
        add_column_if_missing(conn, "vms", col, decl)?;
    }
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
}

fn migrate_v0_to_v1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE_POOLS)?;
    for (col, decl) in [
        ("description", "TEXT"),
        ("enabled", "INTEGER DEFAULT 1"),
        ("created_at", "TIMESTAMP"),
        ("updated_at", "TIMESTAMP"),
    ] {
        add_column_if_missing(conn, "pools", col, decl)?;
    }
    conn.execute_batch(SEED_POOLS)?;

    if table_exists(conn, "vms")? {
        let sql: String = conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'vms'",
            [],
            |r| r.get(0),
        )?;
        if needs_rebuild(&sql) {
            rebuild_vms(conn, &sql)?;
        }
        for (col, decl) in [
            ("vm_name", "TEXT"),
            ("created_at", "TIMESTAMP"),
            ("updated_at", "TIMESTAMP"),
        ] {
            add_column_if_missing(conn, "vms", col, decl)?;
        }
    } else {
        conn.execute_batch(CREATE_VMS)?;
    }
    conn.execute_batch(INDEXES)
}

fn add_column_if_missing(
    conn: &Connection,
    table: &str,
    col: &str,
    decl: &str,
) -> rusqlite::Result<()> {
    if !column_names(conn, table)?.iter().any(|c| c == col) {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {decl}"))?;
    }
    Ok(())
}

/// The first design made vm_id the rowid (`INTEGER PRIMARY KEY AUTOINCREMENT`), which hands out
/// ids by itself; the registry needs it to be an ordinary unique column the user assigns.
fn needs_rebuild(create_sql: &str) -> bool {
    table_parts(create_sql)
        .iter()
        .any(|p| first_word(p).eq_ignore_ascii_case("vm_id") && is_rowid_alias(p))
}

fn is_rowid_alias(column_def: &str) -> bool {
    let upper = column_def.to_ascii_uppercase();
    upper.contains("PRIMARY") && upper.contains("KEY")
}

/// Rebuilds `vms` with `vm_id INTEGER NOT NULL UNIQUE`, keeping every other column definition
/// (with its type, default and CHECK) verbatim, then copies every row, then restores the
/// table's indexes and triggers.
fn rebuild_vms(conn: &Connection, create_sql: &str) -> rusqlite::Result<()> {
    let parts = table_parts(create_sql);
    let mut defs = Vec::new();
    for p in parts {
        if first_word(&p).eq_ignore_ascii_case("vm_id") {
            defs.push("vm_id INTEGER NOT NULL UNIQUE".to_string());
        } else if is_table_constraint(&p) && mentions_vm_id_key(&p) {
            // A table-level PRIMARY KEY (vm_id) would make it the rowid again.
            continue;
        } else {
            defs.push(p);
        }
    }
    let columns = column_names(conn, "vms")?;
    let cols = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let extras: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'vms' AND type IN ('index', 'trigger')
             AND sql IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    conn.execute_batch(&format!(
        "CREATE TABLE vms_migrating ({});
         INSERT INTO vms_migrating ({cols}) SELECT {cols} FROM vms;
         DROP TABLE vms;
         ALTER TABLE vms_migrating RENAME TO vms;",
        defs.join(",\n    ")
    ))?;
    for sql in extras {
        conn.execute_batch(&sql)?;
    }
    Ok(())
}

fn is_table_constraint(part: &str) -> bool {
    let w = first_word(part).to_ascii_uppercase();
    matches!(
        w.as_str(),
        "CONSTRAINT" | "PRIMARY" | "UNIQUE" | "CHECK" | "FOREIGN"
    )
}

fn mentions_vm_id_key(part: &str) -> bool {
    let upper = part.to_ascii_uppercase();
    upper.starts_with("PRIMARY") && upper.contains("VM_ID")
}

fn first_word(s: &str) -> String {
    s.trim()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
        .to_string()
}

/// The comma-separated parts between the outer parentheses of a CREATE TABLE statement,
/// respecting nested parentheses and quotes.
fn table_parts(create_sql: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (create_sql.find('('), create_sql.rfind(')')) else {
        return Vec::new();
    };
    let body = &create_sql[open + 1..close];
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut cur = String::new();
    for c in body.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                cur.push(c);
            }
            None => match c {
                '\'' | '"' | '`' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '[' => {
                    quote = Some(']');
                    cur.push(c);
                }
                '(' => {
                    depth += 1;
                    cur.push(c);
                }
                ')' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => {
                    parts.push(cur.trim().to_string());
                    cur.clear();
                }
                _ => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_string());
    }
    parts
}

#[cfg(test)]
mod tests;

/// A JSON object: one row as the mirror carries it.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// What a registry file is in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The master's registry, where writes happen.
    Primary,
    /// A copy built from the mirror by `refresh`, for this host's mediator.
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// The role and generation a registry file records; `None` where nothing is recorded (a file
/// of before schema 3, or one the mediator created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub role: Option<Role>,
    pub generation: Option<u64>,
}

fn meta(conn: &Connection) -> rusqlite::Result<Meta> {
    if !table_exists(conn, "registry_meta")? {
        return Ok(Meta::default());
    }
    let get = |key: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row(
            "SELECT value FROM registry_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
    };
    Ok(Meta {
        role: match get("role")?.as_deref() {
            Some("primary") => Some(Role::Primary),
            Some("replica") => Some(Role::Replica),
            _ => None,
        },
        generation: get("generation")?.and_then(|g| g.parse().ok()),
    })
}

/// The mirror's key for a column: the contract's names (`pool`, a word for `priority`).
fn to_mirror_key(col: &str) -> &str {
    match col {
        "pool_id" => "pool",
        other => other,
    }
}

fn from_mirror_key(key: &str) -> &str {
    match key {
        "pool" => "pool_id",
        other => other,
    }
}

fn to_sql_value(col: &str, v: &serde_json::Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    use serde_json::Value as J;
    match (col, v) {
        ("priority", J::String(w)) => match Priority::parse(w) {
            Ok(p) => V::Integer(p.as_int()),
            Err(_) => V::Text(w.clone()),
        },
        (_, J::Null) => V::Null,
        (_, J::Bool(b)) => V::Integer(i64::from(*b)),
        (_, J::Number(n)) => match n.as_i64() {
            Some(i) => V::Integer(i),
            None => V::Real(n.as_f64().unwrap_or(0.0)),
        },
        (_, J::String(s)) => V::Text(s.clone()),
        (_, other) => V::Text(other.to_string()),
    }
}

fn to_json_value(col: &str, v: rusqlite::types::ValueRef<'_>) -> Option<serde_json::Value> {
    use rusqlite::types::ValueRef as V;
    use serde_json::Value as J;
    Some(match (col, v) {
        ("priority", V::Integer(n)) => match Priority::from_db(n) {
            Some(p) => J::from(p.as_word()),
            None => J::from(n),
        },
        ("name_chosen", V::Integer(n)) => J::Bool(n != 0),
        (_, V::Null) => J::Null,
        (_, V::Integer(n)) => J::from(n),
        (_, V::Real(f)) => serde_json::Number::from_f64(f).map(J::Number)?,
        (_, V::Text(t)) => J::from(String::from_utf8_lossy(t).into_owned()),
        (_, V::Blob(_)) => return None,
    })
}

fn rows_json(conn: &Connection) -> rusqlite::Result<BTreeMap<String, JsonMap>> {
    rows_json_where(conn, None)
}

fn rows_json_where(
    conn: &Connection,
    vm_uuid: Option<&str>,
) -> rusqlite::Result<BTreeMap<String, JsonMap>> {
    let mut out = BTreeMap::new();
    each_row_json_where(conn, vm_uuid, &mut |uuid, map| {
        out.insert(uuid, map);
    })?;
    Ok(out)
}

fn each_row_json_where(
    conn: &Connection,
    vm_uuid: Option<&str>,
    each: &mut dyn FnMut(String, JsonMap),
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT * FROM vms WHERE ?1 IS NULL OR lower(vm_uuid) = lower(?1) ORDER BY vm_uuid",
    )?;
    let names: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let mut rows = stmt.query([vm_uuid])?;
    while let Some(r) = rows.next()? {
        let mut map = JsonMap::new();
        let mut uuid = String::new();
        for (i, name) in names.iter().enumerate() {
            if name == "vm_uuid" {
                uuid = match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Text(t) => {
                        String::from_utf8_lossy(t).to_ascii_lowercase()
                    }
                    _ => String::new(),
                };
                // The copy names its VM, so a copy that a clone inherits is told apart.
                map.insert("vm_uuid".into(), serde_json::Value::from(uuid.clone()));
                continue;
            }
            if let Some(v) = to_json_value(name, r.get_ref(i)?) {
                map.insert(to_mirror_key(name).to_string(), v);
            }
        }
        each(uuid, map);
    }
    Ok(())
}

fn pools_json(conn: &Connection) -> rusqlite::Result<Vec<JsonMap>> {
    let mut stmt = conn.prepare_cached("SELECT * FROM pools ORDER BY pool_id")?;
    let names: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut map = JsonMap::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(v) = to_json_value(name, r.get_ref(i)?) {
                map.insert(name.to_string(), v);
            }
        }
        out.push(map);
    }
    Ok(out)
}
