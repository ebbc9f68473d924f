use super::*;
use rusqlite::types::Value;

fn rows(conn: &Connection, sql: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// The rows of a migrated `vms`, less the `name_chosen` column schema 2 appends (checked 0:
/// rows from before had their names refreshed by sync, and still do).
fn rows_before_schema_2(conn: &Connection, sql: &str) -> Vec<Vec<Value>> {
    rows(conn, sql)
        .into_iter()
        .map(|mut r| {
            assert_eq!(r.pop(), Some(Value::Integer(0)));
            r
        })
        .collect()
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

const FIRST_DESIGN: &str = "
CREATE TABLE pools (pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')), pool_name TEXT NOT NULL);
INSERT INTO pools VALUES ('A','Pool A'), ('B','Pool B');
CREATE TABLE vms (
    vm_id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL CHECK(pool_id IN ('A','B')),
    priority INTEGER NOT NULL CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO vms (vm_uuid, vm_name, pool_id, priority, created_at, updated_at) VALUES
  ('11111111-1111-1111-1111-111111111111', 'one', 'A', 2, '2025-01-02 03:04:05', '2025-01-02 03:04:05'),
  ('22222222-2222-2222-2222-222222222222', NULL, 'B', 0, NULL, NULL);
INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES
  (100, 'not-a-uuid', 'garbage', 'A', 1),
  (-5, '33333333-3333-3333-3333-333333333333', 'negative', 'B', 1),
  (0, '44444444-4444-4444-4444-444444444444', 'zero', 'A', 0);
";

const MEDIATOR_ALTER: &str = "
ALTER TABLE vms ADD COLUMN weight INTEGER NOT NULL DEFAULT 50;
ALTER TABLE vms ADD COLUMN max_jobs_per_sec INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN max_queue_depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN error_count INTEGER NOT NULL DEFAULT 0;
UPDATE vms SET weight = 70, max_jobs_per_sec = 5, max_queue_depth = 9, quarantined = 1, error_count = 3
  WHERE vm_name = 'one';
";

const LATER_DESIGN_SQL_FILE: &str = "
CREATE TABLE pools (pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')), pool_name TEXT NOT NULL,
    description TEXT, enabled INTEGER DEFAULT 1 CHECK(enabled IN (0,1)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
INSERT INTO pools (pool_id, pool_name, enabled) VALUES ('A','Pool A',1), ('B','Pool B',1);
CREATE TABLE vms (
    vm_id INTEGER NOT NULL UNIQUE,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL DEFAULT 'A' CHECK(pool_id IN ('A','B')),
    priority INTEGER NOT NULL DEFAULT 1 CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    weight REAL NOT NULL DEFAULT 1.0,
    max_jobs_per_sec INTEGER NOT NULL DEFAULT 0,
    max_queue_depth INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0 CHECK(quarantined IN (0,1)),
    error_count INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (pool_id) REFERENCES pools(pool_id)
);
CREATE INDEX idx_vm_uuid ON vms(vm_uuid);
CREATE INDEX idx_vm_pool ON vms(pool_id);
CREATE INDEX idx_vm_priority ON vms(priority);
INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority, weight, quarantined, error_count) VALUES
  (1, 'aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa', 'alpha', 'A', 2, 2.5, 1, 7),
  (200, 'bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb', 'beta', 'B', 1, 1.0, 0, 0);
";

fn make_db(dir: &Path, sql: &str) -> PathBuf {
    let path = dir.join("vgpu_config.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    path
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bak"))
        .collect()
}

#[test]
fn fresh_database_has_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/vgpu_config.db");
    let store = Store::open(&path).unwrap();
    assert!(store.migration_backup().is_none());
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let pools = store.pools().unwrap();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0].pool_name, "Pool A");
    assert!(pools[1].enabled);
    let mode: String = store
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(backups(path.parent().unwrap()).is_empty());
}

#[test]
fn first_design_with_mediator_columns_migrates_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), &format!("{FIRST_DESIGN}{MEDIATOR_ALTER}"));
    let before = rows(
        &Connection::open(&path).unwrap(),
        "SELECT * FROM vms ORDER BY vm_uuid",
    );
    assert_eq!(before.len(), 5);

    let store = Store::open(&path).unwrap();
    let backup = store.migration_backup().unwrap().to_path_buf();
    drop(store);

    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        rows_before_schema_2(&conn, "SELECT * FROM vms ORDER BY vm_uuid"),
        before
    );
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'vms'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sql.to_ascii_uppercase().contains("AUTOINCREMENT"), "{sql}");
    assert!(sql.contains("weight INTEGER NOT NULL DEFAULT 50"), "{sql}");
    // vm_id is no longer the rowid: an insert without it is refused instead of numbered.
    assert!(conn
        .execute(
            "INSERT INTO vms (vm_uuid, pool_id, priority) VALUES ('x', 'A', 0)",
            []
        )
        .is_err());
    // The backup holds the original, unmigrated database.
    let old = Connection::open(&backup).unwrap();
    assert_eq!(rows(&old, "SELECT * FROM vms ORDER BY vm_uuid"), before);
    let v: i64 = old
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 0);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[test]
fn migrated_rows_read_back_with_their_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), FIRST_DESIGN);
    let store = Store::open(&path).unwrap();
    let all = store.list(&ListFilter::default()).unwrap();
    assert_eq!(all.len(), 5);
    let one = store
        .get("11111111-1111-1111-1111-111111111111")
        .unwrap()
        .unwrap();
    assert_eq!(one.vm_id, 1);
    assert_eq!(one.priority, Priority::High);
    assert_eq!(one.created_at.as_deref(), Some("2025-01-02T03:04:05Z"));
    let two = store
        .get("22222222-2222-2222-2222-222222222222")
        .unwrap()
        .unwrap();
    assert_eq!(two.created_at, None);
    let bad: Vec<_> = all.iter().filter(|r| !r.problems().is_empty()).collect();
    assert_eq!(bad.len(), 3);
    // Ids 1 and 2 were handed out by AUTOINCREMENT, 0 and -5 do not count: 3 is next.
    assert_eq!(store.next_free_vm_id().unwrap(), Some(3));
}

#[test]
fn later_design_from_sql_file_keeps_types_checks_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), LATER_DESIGN_SQL_FILE);
    let before = rows(
        &Connection::open(&path).unwrap(),
        "SELECT * FROM vms ORDER BY vm_id",
    );
    let store = Store::open(&path).unwrap();
    assert!(store.migration_backup().is_some());
    drop(store);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        rows_before_schema_2(&conn, "SELECT * FROM vms ORDER BY vm_id"),
        before
    );
    assert_eq!(before[0][7], Value::Real(2.5));
    assert!(conn
        .execute("UPDATE vms SET quarantined = 5 WHERE vm_id = 1", [])
        .is_err());
}

#[test]
fn operations_leave_mediator_columns_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), LATER_DESIGN_SQL_FILE);
    let mut store = Store::open(&path).unwrap();
    let tx = store.write().unwrap();
    tx.update(
        "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        &NewValues {
            vm_name: Some("alpha2".into()),
            pool: Pool::B,
            priority: Priority::Low,
            vm_id: 5,
        },
    )
    .unwrap();
    tx.insert(
        "cccccccc-cccc-cccc-cccc-cccccccccccc",
        &NewValues {
            vm_name: None,
            pool: Pool::A,
            priority: Priority::Medium,
            vm_id: 6,
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let conn = Connection::open(&path).unwrap();
    let r = rows(
        &conn,
        "SELECT vm_id, weight, quarantined, error_count FROM vms ORDER BY vm_uuid",
    );
    assert_eq!(
        r[0],
        vec![
            Value::Integer(5),
            Value::Real(2.5),
            Value::Integer(1),
            Value::Integer(7)
        ]
    );
    // A new row gets the mediator's defaults.
    assert_eq!(r[2][1], Value::Real(1.0));
}

#[test]
fn second_open_does_not_migrate_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), FIRST_DESIGN);
    assert!(Store::open(&path).unwrap().migration_backup().is_some());
    assert!(Store::open(&path).unwrap().migration_backup().is_none());
    assert_eq!(backups(dir.path()).len(), 1);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), "CREATE TABLE t(x); PRAGMA user_version = 7;");
    let e = Store::open(&path).err().unwrap();
    assert_eq!(e.code(), crate::ErrorCode::DatabaseError);
    assert!(e.to_string().contains("schema version 7"), "{e}");
}

#[test]
fn next_free_id_fills_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.db")).unwrap();
    assert_eq!(store.next_free_vm_id().unwrap(), Some(1));
    let tx = store.write().unwrap();
    for (i, id) in [1u32, 2, 4, 4294967295].iter().enumerate() {
        tx.insert(
            &format!("0000000{i}-0000-0000-0000-000000000000"),
            &NewValues {
                vm_name: None,
                pool: Pool::A,
                priority: Priority::Low,
                vm_id: *id,
            },
        )
        .unwrap();
    }
    assert_eq!(tx.next_free_vm_id().unwrap(), Some(3));
    let e = tx.check_vm_id_free(4, "other").unwrap_err();
    assert_eq!(
        e.to_string(),
        "VM ID 4 already in use by VM 00000002-0000-0000-0000-000000000000"
    );
    assert!(tx
        .check_vm_id_free(4, "00000002-0000-0000-0000-000000000000")
        .is_ok());
    tx.commit().unwrap();
}

#[test]
fn list_is_ordered_by_pool_priority_high_first_then_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.db")).unwrap();
    let tx = store.write().unwrap();
    let input = [
        (Pool::B, Priority::High, 1u32),
        (Pool::A, Priority::Low, 2),
        (Pool::A, Priority::High, 9),
        (Pool::A, Priority::High, 3),
    ];
    for (i, (pool, priority, vm_id)) in input.iter().enumerate() {
        tx.insert(
            &format!("0000000{i}-0000-0000-0000-000000000000"),
            &NewValues {
                vm_name: None,
                pool: *pool,
                priority: *priority,
                vm_id: *vm_id,
            },
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let ids: Vec<i64> = store
        .list(&ListFilter::default())
        .unwrap()
        .iter()
        .map(|r| r.vm_id)
        .collect();
    assert_eq!(ids, vec![3, 9, 2, 1]);
    let a_high = store
        .list(&ListFilter {
            pool: Some(Pool::A),
            priority: Some(Priority::High),
            quarantined: false,
        })
        .unwrap();
    assert_eq!(a_high.len(), 2);
    let pools = store.pools().unwrap();
    assert_eq!(pools[0].vm_count, 3);
    assert_eq!(
        pools[0].by_priority,
        ByPriority {
            low: 1,
            medium: 0,
            high: 2
        }
    );
}

#[test]
fn concurrent_writers_never_share_an_id_or_lose_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    Store::open(&path).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut store = Store::open(&path).unwrap();
                for i in 0..25 {
                    let tx = store.write().unwrap();
                    let id = tx.next_free_vm_id().unwrap().unwrap();
                    tx.insert(
                        &format!("{t:08x}-0000-0000-0000-{i:012x}"),
                        &NewValues {
                            vm_name: None,
                            pool: Pool::A,
                            priority: Priority::Low,
                            vm_id: id,
                        },
                    )
                    .unwrap();
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let mut ids: Vec<i64> = store
        .list(&ListFilter::default())
        .unwrap()
        .iter()
        .map(|r| r.vm_id)
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
}

#[test]
fn table_parts_respects_parentheses_and_quotes() {
    let parts = table_parts(
        "CREATE TABLE t (a INTEGER CHECK(a IN (0,1)), \"b,c\" TEXT DEFAULT 'x,y', PRIMARY KEY (a))",
    );
    assert_eq!(
        parts,
        vec![
            "a INTEGER CHECK(a IN (0,1))",
            "\"b,c\" TEXT DEFAULT 'x,y'",
            "PRIMARY KEY (a)"
        ]
    );
}

static WAITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_wait(_: &Path) {
    WAITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn a_locked_registry_says_it_waits_then_gives_up_or_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut store = Store::open(&path).unwrap();
    store.set_waiter(Some(count_wait));
    store.set_busy_timeout(Duration::from_millis(2500));
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = std::time::Instant::now();
    let e = store.write().err().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    assert!(
        e.to_string().contains("still locked by another process"),
        "{e}"
    );
    assert_eq!(e.details()["locked"], true);
    assert_eq!(
        WAITS.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "told once"
    );

    // The holder lets go while we wait: the write goes on.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        holder.execute_batch("COMMIT").unwrap();
    });
    let tx = store.write().unwrap();
    tx.commit().unwrap();
    releaser.join().unwrap();
    assert_eq!(WAITS.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn reading_creates_nothing_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("sub/none.db");
    let store = Store::open_read(&missing).unwrap();
    assert!(store.list(&ListFilter::default()).unwrap().is_empty());
    assert_eq!(store.pools().unwrap().len(), 2);
    assert!(!dir.path().join("sub").exists(), "no directory, no file");

    // An older tool's database read through a migrated copy in memory: the file is untouched.
    let path = make_db(dir.path(), FIRST_DESIGN);
    let before = std::fs::read(&path).unwrap();
    let src = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let store = Store::in_memory(&path, Some(&src)).unwrap();
    assert_eq!(store.list(&ListFilter::default()).unwrap().len(), 5);
    assert!(store.migration_backup().is_none());
    drop((store, src));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(user_version(&path), 0);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no backup written: {names:?}");

    // A current registry opens read-only: a write through it fails, the file stays as it was.
    let path = dir.path().join("current.db");
    drop(Store::open(&path).unwrap());
    let mut store = Store::open_read(&path).unwrap();
    let values = NewValues {
        vm_name: None,
        pool: Pool::A,
        priority: Priority::Low,
        vm_id: 1,
    };
    let e = store
        .write()
        .and_then(|tx| tx.insert("00000000-0000-0000-0000-000000000001", &values))
        .err()
        .unwrap();
    assert!(e.to_string().contains("readonly"), "{e}");
    assert!(Store::open(&path)
        .unwrap()
        .list(&ListFilter::default())
        .unwrap()
        .is_empty());
}

#[test]
fn schema_1_gains_the_chosen_name_mark_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{}; {}; {}; {SEED_POOLS};
             INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority)
               VALUES (7, '11111111-1111-1111-1111-111111111111', 'seven', 'B', 2);
             PRAGMA user_version = 1;",
            CREATE_POOLS,
            CREATE_VMS.replace(
                ",\n    name_chosen INTEGER NOT NULL DEFAULT 0 CHECK(name_chosen IN (0,1))",
                ""
            ),
            INDEXES.trim_end_matches(';'),
        ))
        .unwrap();
        assert!(!column_names(&conn, "vms")
            .unwrap()
            .contains(&"name_chosen".to_string()));
    }
    let store = Store::open(&path).unwrap();
    assert!(store.migration_backup().is_some());
    let regs = store.list(&ListFilter::default()).unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(
        (regs[0].vm_id, regs[0].vm_name.as_deref()),
        (7, Some("seven"))
    );
    assert!(!regs[0].name_chosen);
    assert_eq!(
        store.meta().unwrap(),
        Meta::default(),
        "no role recorded yet"
    );
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[test]
fn replace_all_rewrites_in_place_for_an_open_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let mut store = Store::open(&path).unwrap();
    // The mediator keeps one connection open for its whole life.
    let reader = Connection::open(&path).unwrap();
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM vms", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&reader), 0);
    let row = |id: i64, pool: &str| {
        serde_json::json!({"vm_id": id, "pool": pool, "priority": "high", "vm_name": "n",
                           "weight": 70, "no_such_column": 1})
        .as_object()
        .unwrap()
        .clone()
    };
    let u1 = "11111111-1111-1111-1111-111111111111".to_string();
    let u2 = "22222222-2222-2222-2222-222222222222".to_string();
    let tx = store.write().unwrap();
    let refused = tx
        .replace_all(
            &[(u1.clone(), row(1, "A")), (u2.clone(), row(1, "B"))],
            None,
        )
        .unwrap();
    tx.set_meta(Role::Replica, 4).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        refused.len(),
        1,
        "two VMs claiming vm_id 1: the second is left out"
    );
    assert_eq!(refused[0].0, u2);
    assert_eq!(count(&reader), 1);
    let (id, pool, prio): (i64, String, i64) = reader
        .query_row("SELECT vm_id, pool_id, priority FROM vms", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((id, pool.as_str(), prio), (1, "A", 2));
    assert_eq!(
        store.meta().unwrap(),
        Meta {
            role: Some(Role::Replica),
            generation: Some(4)
        }
    );
    let tx = store.write().unwrap();
    tx.replace_all(&[(u2.clone(), row(9, "B"))], None).unwrap();
    tx.commit().unwrap();
    let ids: Vec<i64> = reader
        .prepare("SELECT vm_id FROM vms")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ids, [9], "the same open connection sees the second refresh");
    // Mirror values round-trip: what rows_json gives, replace_all takes back unchanged.
    let rows = store.rows_json().unwrap();
    assert_eq!(rows[&u2]["priority"], "high");
    assert_eq!(rows[&u2]["pool"], "B");
    assert!(!rows[&u2].contains_key("no_such_column"));
}

#[test]
fn opening_a_registry_locked_against_readers_gives_up_after_the_lock_timeout() {
    // An older tool's file (rollback journal) whose writer holds its exclusive lock: neither a
    // read nor a write may even read the schema version, let alone migrate or back it up.
    let dir = tempfile::tempdir().unwrap();
    let path = make_db(dir.path(), FIRST_DESIGN);
    let before = std::fs::read(&path).unwrap();
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for write in [false, true] {
        let started = std::time::Instant::now();
        let e = if write {
            Store::open_waiting(&path, Duration::from_secs(1))
        } else {
            Store::open_read_waiting(&path, Duration::from_secs(1))
        }
        .err()
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            matches!(e, Error::Locked { waited_s: 1, .. }),
            "write {write}: {e}"
        );
        assert!(!e.to_string().contains("database is locked"), "{e}");
    }
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no backup, no journal left: {names:?}");
}

#[test]
fn an_empty_file_reads_as_an_empty_registry_and_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    std::fs::write(&path, b"").unwrap();
    let store = Store::open_read(&path).unwrap();
    assert!(store.list(&ListFilter::default()).unwrap().is_empty());
    drop(store);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // a write starts the registry in it
    drop(Store::open(&path).unwrap());
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[test]
fn reading_a_registry_leaves_no_wal_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    drop(Store::open(&path).unwrap());
    let names = || {
        let mut n: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        n.sort();
        n
    };
    let before = names();
    let store = Store::open_read(&path).unwrap();
    store.list(&ListFilter::default()).unwrap();
    drop(store);
    assert_eq!(names(), before);
}

#[test]
fn a_read_after_a_writer_died_mid_transaction_in_a_rollback_journal_sees_the_file_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    drop(Store::open(&path).unwrap());
    // Before it is WAL (creating or migrating the file) a write goes through a rollback journal.
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    // A one-page cache spills the transaction into the file before it commits.
    conn.execute_batch("PRAGMA cache_size=1; BEGIN IMMEDIATE;")
        .unwrap();
    for i in 1..=400 {
        conn.execute(
            "INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (?1, ?2, ?3, 'A', 1)",
            params![i, format!("{i:08}-0000-4000-8000-000000000000"), "x".repeat(200)],
        )
        .unwrap();
    }
    // The writer dies here: the file holds pages of the unfinished transaction, the journal
    // the pages as they were.
    let crash = dir.path().join("crash.db");
    std::fs::copy(&path, &crash).unwrap();
    std::fs::copy(
        dir.path().join("r.db-journal"),
        dir.path().join("crash.db-journal"),
    )
    .unwrap();
    drop(conn);
    let store = Store::open_read(&crash).unwrap();
    assert_eq!(store.list(&ListFilter::default()).unwrap(), Vec::new());
    assert!(!dir.path().join("crash.db-journal").exists(), "rolled back");
}

#[test]
fn a_store_opened_for_a_change_creates_the_registry_only_when_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("r.db");
    let wait = Duration::from_secs(2);
    let store = Store::open_for_change(&path, wait).unwrap();
    assert!(store.list(&ListFilter::default()).unwrap().is_empty());
    drop(store);
    assert!(
        !dir.path().join("sub").exists(),
        "nothing written, nothing created"
    );
    let mut store = Store::open_for_change(&path, wait).unwrap();
    let tx = store.write().unwrap();
    tx.commit().unwrap();
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    drop(store);
    // An existing registry is opened as for any write: its rows are there.
    let store = Store::open_for_change(&path, wait).unwrap();
    assert_eq!(
        store.meta().unwrap(),
        Store::open_read(&path).unwrap().meta().unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
