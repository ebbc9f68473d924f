//! The registry's values and their validation (SPEC §2). Every front end parses user input
//! through these functions, so a value is accepted or refused identically everywhere.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Registry pool, `A` or `B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Pool {
    A,
    B,
}

impl Pool {
    pub const ALL: [Pool; 2] = [Pool::A, Pool::B];

    /// `A`/`B`, case-insensitive. Nothing else: no first-letter guessing.
    pub fn parse(s: &str) -> Result<Pool> {
        match s {
            "A" | "a" => Ok(Pool::A),
            "B" | "b" => Ok(Pool::B),
            _ => Err(Error::invalid("pool", s, "expected A or B")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pool::A => "A",
            Pool::B => "B",
        }
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scheduling priority; stored as 0/1/2, written to the device as a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Medium, Priority::High];

    /// `low`/`medium`/`high` or `0`/`1`/`2`, case-insensitive.
    pub fn parse(s: &str) -> Result<Priority> {
        match s.to_ascii_lowercase().as_str() {
            "low" | "0" => Ok(Priority::Low),
            "medium" | "1" => Ok(Priority::Medium),
            "high" | "2" => Ok(Priority::High),
            _ => Err(Error::invalid(
                "priority",
                s,
                "expected low, medium, high (or 0, 1, 2)",
            )),
        }
    }

    pub fn from_db(n: i64) -> Option<Priority> {
        match n {
            0 => Some(Priority::Low),
            1 => Some(Priority::Medium),
            2 => Some(Priority::High),
            _ => None,
        }
    }

    pub fn as_int(self) -> i64 {
        match self {
            Priority::Low => 0,
            Priority::Medium => 1,
            Priority::High => 2,
        }
    }

    pub fn as_word(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_word())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Priority::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_word())
    }
}

/// The id the mediator keys on: QEMU `uint32`, 0 meaning unset, so 1 ..= u32::MAX.
pub const VM_ID_MIN: u32 = 1;
pub const VM_ID_MAX: u32 = u32::MAX;

/// Decimal digits only (no sign, no exponent, no spaces), 1 ..= 4294967295.
/// A whole number in `min..=max` for the argument `key` (weights, rates, queue depths): decimal
/// digits only, no sign.
pub fn parse_bounded(key: &str, s: &str, min: u32, max: u32) -> Result<u32> {
    let range = if max == u32::MAX {
        format!("a whole number of at least {min}")
    } else {
        format!("a whole number from {min} to {max}")
    };
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Err(Error::invalid(key, s, format!("expected {range}")));
    }
    match s.parse::<u64>() {
        Ok(n) if n >= u64::from(min) && n <= u64::from(max) => Ok(n as u32),
        _ => Err(Error::invalid(
            key,
            s,
            format!("out of range: expected {range}"),
        )),
    }
}

/// The mediator's weight: 1 to 100.
pub fn parse_weight(s: &str) -> Result<u32> {
    parse_bounded("weight", s, 1, 100)
}

pub fn parse_vm_id(s: &str) -> Result<u32> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if s.strip_prefix('-').is_some_and(digits) {
        return Err(Error::invalid(
            "vm-id",
            s,
            "out of range: a vm_id is from 1 to 4294967295",
        ));
    }
    if !digits(s) {
        return Err(Error::invalid(
            "vm-id",
            s,
            "expected a whole number from 1 to 4294967295",
        ));
    }
    match s.parse::<u64>() {
        Ok(n) if n >= u64::from(VM_ID_MIN) && n <= u64::from(VM_ID_MAX) => Ok(n as u32),
        _ => Err(Error::invalid(
            "vm-id",
            s,
            "out of range: a vm_id is from 1 to 4294967295",
        )),
    }
}

/// Canonical 8-4-4-4-12 hex, case-insensitive; returned lower-case.
pub fn parse_vm_uuid(s: &str) -> Result<String> {
    if is_canonical_uuid(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Error::invalid(
            "vm-uuid",
            s,
            "expected a UUID like 0f8fad5b-d9cb-469f-a165-70867728950e",
        ))
    }
}

pub fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub const VM_NAME_MAX_CHARS: usize = 255;

/// A VM name: 1 to 255 characters, no control characters.
pub fn parse_vm_name(s: &str) -> Result<String> {
    if s.is_empty() {
        return Err(Error::invalid("vm-name", s, "must not be empty"));
    }
    let n = s.chars().count();
    if n > VM_NAME_MAX_CHARS {
        return Err(Error::invalid(
            "vm-name",
            &truncate_for_message(s),
            format!("{n} characters, at most {VM_NAME_MAX_CHARS} allowed"),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            "vm-name",
            s,
            format!("contains the control character {:?}", c),
        ));
    }
    Ok(s.to_string())
}

fn truncate_for_message(s: &str) -> String {
    let head: String = s.chars().take(40).collect();
    format!("{head}…")
}

/// Strict boolean of the plugin API: `true` or `false` (case-insensitive).
pub fn parse_bool(what: &str, s: &str) -> Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::invalid(what, s, "expected true or false")),
    }
}

/// How a command names its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Uuid(String),
    /// The first characters of a uuid (at least [`UUID_PREFIX_MIN`] hex digits, lower case), as
    /// people copy them from narrow tables; it must name one VM.
    UuidPrefix(String),
    /// A VM's XAPI name-label, or the name stored in the registry.
    Name(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Uuid(u) => write!(f, "with uuid {u}"),
            Selector::UuidPrefix(p) => write!(f, "with a uuid starting {p}"),
            Selector::Name(n) => write!(f, "named {n:?}"),
        }
    }
}

/// The fewest hex digits of a uuid prefix that selects a VM.
pub const UUID_PREFIX_MIN: usize = 8;

/// A full uuid, or a prefix of at least 8 hex digits shaped like the start of one.
pub fn parse_vm_selector_uuid(s: &str) -> Result<Selector> {
    if is_canonical_uuid(s) {
        return Ok(Selector::Uuid(s.to_ascii_lowercase()));
    }
    let shaped = s.len() < 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let digits = s.bytes().filter(u8::is_ascii_hexdigit).count();
    if shaped && digits >= UUID_PREFIX_MIN {
        return Ok(Selector::UuidPrefix(s.to_ascii_lowercase()));
    }
    Err(Error::invalid(
        "vm-uuid",
        s,
        "expected a UUID like 0f8fad5b-d9cb-469f-a165-70867728950e, or its first 8 or more \
         characters",
    ))
}

/// A row of the `vms` table. Fields are kept as stored so rows the old tools wrote without
/// validation (vm_id 0 or negative, garbage uuids) can still be listed and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub vm_id: i64,
    pub pool: Pool,
    pub priority: Priority,
    /// RFC 3339 UTC, or null when the old tool stored none.
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The user chose `vm_name` (rather than it being the VM's name-label when registered):
    /// `sync` keeps it.
    #[serde(skip)]
    pub name_chosen: bool,
    /// The mediator's scheduling controls (SPEC §10).
    #[serde(flatten)]
    pub controls: Controls,
}

/// The per-VM controls the GPU mediator reads by vm_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controls {
    /// 1…100, default 50; a number as stored (an older SQL file made it REAL).
    #[serde(default = "default_weight")]
    pub weight: serde_json::Number,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_jobs_per_sec: i64,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_queue_depth: i64,
    #[serde(default)]
    pub quarantined: bool,
    #[serde(default)]
    pub error_count: i64,
}

fn default_weight() -> serde_json::Number {
    50.into()
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            weight: default_weight(),
            max_jobs_per_sec: 0,
            max_queue_depth: 0,
            quarantined: false,
            error_count: 0,
        }
    }
}

impl Registration {
    pub fn vm_ref(&self) -> crate::error::VmRef {
        crate::error::VmRef {
            vm_uuid: self.vm_uuid.clone(),
            vm_name: self.vm_name.clone(),
        }
    }

    /// Problems with a row that the old tools let in; empty for a valid row.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(i64::from(VM_ID_MIN)..=i64::from(VM_ID_MAX)).contains(&self.vm_id) {
            out.push(format!(
                "vm_id {} is outside 1..4294967295 (fix with set-vm-id)",
                self.vm_id
            ));
        }
        if !is_canonical_uuid(&self.vm_uuid) || self.vm_uuid != self.vm_uuid.to_ascii_lowercase() {
            out.push(format!(
                "vm_uuid {:?} is not a canonical lower-case UUID (fix with remove-vm)",
                self.vm_uuid
            ));
        }
        out
    }
}

/// Text from outside (XAPI name-labels, stored names) made safe to print on a terminal: control
/// characters, which could carry escape sequences, are shown escaped.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        std::borrow::Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// SQLite `CURRENT_TIMESTAMP` text (`YYYY-MM-DD HH:MM:SS`, UTC) as RFC 3339; other text as is.
pub fn sqlite_time_to_rfc3339(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() == 19 && b[10] == b' ' {
        format!("{}T{}Z", &s[..10], &s[11..])
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn pools() {
        assert_eq!(Pool::parse("a").unwrap(), Pool::A);
        assert_eq!(Pool::parse("B").unwrap(), Pool::B);
        for bad in ["", "C", "AB", "Alpha", " A", "b ", "1"] {
            let e = Pool::parse(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn priorities() {
        assert_eq!(Priority::parse("HIGH").unwrap(), Priority::High);
        assert_eq!(Priority::parse("0").unwrap(), Priority::Low);
        assert_eq!(Priority::parse("Medium").unwrap(), Priority::Medium);
        for bad in ["", "3", "-1", "hi", "urgent", "01", "high "] {
            assert!(Priority::parse(bad).is_err(), "{bad}");
        }
        for p in Priority::ALL {
            assert_eq!(Priority::from_db(p.as_int()), Some(p));
            assert_eq!(Priority::parse(p.as_word()).unwrap(), p);
        }
    }

    #[test]
    fn vm_ids() {
        assert_eq!(parse_vm_id("1").unwrap(), 1);
        assert_eq!(parse_vm_id("4294967295").unwrap(), u32::MAX);
        for bad in [
            "0",
            "-1",
            "+1",
            "1e3",
            "4294967296",
            "12abc",
            "",
            " 1",
            "1 ",
            "0x10",
            "1.0",
            "99999999999999999999999",
        ] {
            let e = parse_vm_id(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_vm_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E").unwrap(),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
        for bad in [
            "",
            "0f8fad5b",
            "0f8fad5bd9cb469fa16570867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "{0f8fad5b-d9cb-469f-a165-70867728950e}",
            "0f8fad5b-d9cb-469f-a165-70867728950e ",
        ] {
            assert!(parse_vm_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(parse_vm_name("web 01").unwrap(), "web 01");
        assert!(parse_vm_name(&"x".repeat(255)).is_ok());
        assert!(parse_vm_name(&"é".repeat(255)).is_ok());
        assert!(parse_vm_name(&"x".repeat(256)).is_err());
        for bad in [
            "",
            "a\nb",
            "tab\there",
            "nul\0",
            "esc\u{1b}[31m",
            "del\u{7f}",
        ] {
            assert!(parse_vm_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uuid_prefixes_of_eight_digits_or_more() {
        let full = "48DF46E9-31b9-4aea-b4b8-678e9a3c70d6";
        assert_eq!(
            parse_vm_selector_uuid(full).unwrap(),
            Selector::Uuid(full.to_ascii_lowercase())
        );
        for ok in [
            "48df46e9",
            "48DF46E9-",
            "48df46e9-31",
            "48df46e9-31b9-4aea-b4b8-678e9a3c70d",
        ] {
            assert_eq!(
                parse_vm_selector_uuid(ok).unwrap(),
                Selector::UuidPrefix(ok.to_ascii_lowercase()),
                "{ok}"
            );
        }
        for bad in [
            "48df46e",
            "48df46e931b9",
            "48df46e9-31b9x",
            "",
            "not-a-uuid",
            "48df46e9 ",
        ] {
            let e = parse_vm_selector_uuid(bad).unwrap_err();
            assert!(e.to_string().contains("first 8 or more"), "{bad}: {e}");
        }
    }

    #[test]
    fn problems_of_old_rows() {
        let mut r = Registration {
            vm_uuid: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            vm_name: None,
            vm_id: 3,
            pool: Pool::A,
            priority: Priority::High,
            created_at: None,
            updated_at: None,
            name_chosen: false,
            controls: Controls::default(),
        };
        assert!(r.problems().is_empty());
        r.vm_id = 0;
        r.vm_uuid = "garbage".into();
        assert_eq!(r.problems().len(), 2);
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("web 01"), "web 01");
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
    }

    #[test]
    fn times() {
        assert_eq!(
            sqlite_time_to_rfc3339("2026-01-11 10:00:00"),
            "2026-01-11T10:00:00Z"
        );
        assert_eq!(sqlite_time_to_rfc3339("yesterday"), "yesterday");
    }
}
