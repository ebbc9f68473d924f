//! The `device-model-args` codec.
//!
//! The patched qemu-wrapper splits the platform value with shell-word rules, so we parse and
//! write it with the same rules (`shell-words`). Only the vgpu device entry is ever touched: every
//! other token, and every other property of the vgpu device, is kept in place.

use crate::model::{Pool, Priority};

/// The device types recognised as "the vgpu device", besides the configured one.
pub const LEGACY_TYPES: [&str; 2] = ["vgpu-cuda", "vgpu-stub"];

/// The platform key the qemu-wrapper reads.
pub const PLATFORM_KEY: &str = "device-model-args";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot split device-model-args {value:?} into words: {reason}")]
pub struct ParseError {
    pub value: String,
    pub reason: String,
}

/// device-model-args as a list of words.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceArgs {
    tokens: Vec<String>,
}

/// One `key=value` (or bare `flag`) property of a QEMU `-device` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop {
    pub key: String,
    pub value: Option<String>,
}

/// The vgpu `-device` entry found in device-model-args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuEntry {
    /// Index of the device specification word (the one after `-device`).
    pub index: usize,
    pub device_type: String,
    pub props: Vec<Prop>,
}

impl VgpuEntry {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.value.as_deref())
    }

    fn set(&mut self, key: &str, value: &str) {
        match self.props.iter_mut().find(|p| p.key == key) {
            Some(p) => p.value = Some(value.to_string()),
            None => self.props.push(Prop {
                key: key.to_string(),
                value: Some(value.to_string()),
            }),
        }
    }

    fn render(&self) -> String {
        let mut parts = vec![escape_comma(&self.device_type)];
        // An empty property (`vgpu-cuda,` or `a,,,b` as written by hand) carries nothing, and
        // joined with `,` it would read back as an escaped comma inside its neighbours.
        for p in self
            .props
            .iter()
            .filter(|p| !p.key.is_empty() || p.value.is_some())
        {
            parts.push(match &p.value {
                Some(v) => format!("{}={}", escape_comma(&p.key), escape_comma(v)),
                None => escape_comma(&p.key),
            });
        }
        parts.join(",")
    }
}

/// What the registry wants on the VM's vgpu device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub device_type: String,
    /// Properties written right after the type on a new entry (config `[device] extra`).
    pub extra: String,
    pub pool: Pool,
    pub priority: Priority,
    pub vm_id: u32,
}

impl DeviceArgs {
    pub fn parse(value: &str) -> Result<DeviceArgs, ParseError> {
        shell_words::split(value)
            .map(|tokens| DeviceArgs { tokens })
            .map_err(|e| ParseError {
                value: value.to_string(),
                reason: e.to_string(),
            })
    }

    #[cfg(test)]
    pub fn from_tokens(tokens: Vec<String>) -> DeviceArgs {
        DeviceArgs { tokens }
    }

    #[cfg(test)]
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The first `-device` entry whose type is `configured_type` or a legacy vgpu type.
    pub fn find_vgpu(&self, configured_type: &str) -> Option<VgpuEntry> {
        let mut i = 0;
        while i + 1 < self.tokens.len() {
            if is_device_flag(&self.tokens[i]) {
                let parts = split_props(&self.tokens[i + 1]);
                if let Some((ty, rest)) = parts.split_first() {
                    if ty == configured_type || LEGACY_TYPES.contains(&ty.as_str()) {
                        return Some(VgpuEntry {
                            index: i + 1,
                            device_type: ty.clone(),
                            props: rest.iter().map(|s| to_prop(s)).collect(),
                        });
                    }
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        None
    }

    /// Writes the registry values into the vgpu entry: in place (legacy type replaced, other
    /// properties kept) when there is one, else as a new `-device` at the end.
    pub fn set_vgpu(&mut self, spec: &DeviceSpec) {
        let entry = match self.find_vgpu(&spec.device_type) {
            Some(mut e) => {
                e.device_type = spec.device_type.clone();
                e
            }
            None => {
                // A value ending in `-device` without its argument (which QEMU refuses): the new
                // entry becomes that argument. After a second flag it would be read as a flag's
                // argument and never found again, and every sync would append one more.
                if !self.ends_in_bare_device_flag() {
                    self.tokens.push("-device".to_string());
                }
                self.tokens.push(String::new());
                VgpuEntry {
                    index: self.tokens.len() - 1,
                    device_type: spec.device_type.clone(),
                    props: split_props(&spec.extra)
                        .iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| to_prop(s))
                        .collect(),
                }
            }
        };
        let mut entry = entry;
        entry.set("pool_id", spec.pool.as_str());
        entry.set("priority", spec.priority.as_word());
        entry.set("vm_id", &spec.vm_id.to_string());
        self.tokens[entry.index] = entry.render();
    }

    /// Whether the last word is a device flag without its argument, pairing flags and
    /// arguments as [`DeviceArgs::find_vgpu`] does.
    fn ends_in_bare_device_flag(&self) -> bool {
        let mut i = 0;
        while i < self.tokens.len() {
            if is_device_flag(&self.tokens[i]) {
                if i + 1 == self.tokens.len() {
                    return true;
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        false
    }

    /// Removes the vgpu entry (the `-device` word and its specification). True if one was found.
    pub fn remove_vgpu(&mut self, configured_type: &str) -> bool {
        match self.find_vgpu(configured_type) {
            Some(e) => {
                self.tokens.drain(e.index - 1..=e.index);
                true
            }
            None => false,
        }
    }

    /// The value to store: words joined by spaces, quoted with shell-word rules only where a
    /// word needs it (so `-device vgpu-cuda,addr=5,…` stays readable in `xe vm-param-get`).
    pub fn render(&self) -> String {
        self.tokens
            .iter()
            .map(|t| quote_word(t))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn quote_word(t: &str) -> String {
    let plain = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,=:/@%+".contains(c));
    if plain {
        t.to_string()
    } else {
        shell_words::quote(t).into_owned()
    }
}

fn is_device_flag(t: &str) -> bool {
    t == "-device" || t == "--device"
}

fn to_prop(s: &str) -> Prop {
    match s.split_once('=') {
        Some((k, v)) => Prop {
            key: k.to_string(),
            value: Some(v.to_string()),
        },
        None => Prop {
            key: s.to_string(),
            value: None,
        },
    }
}

/// Splits a QEMU option string on `,`, where `,,` stands for a literal comma.
fn split_props(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn escape_comma(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(pool: Pool, priority: Priority, vm_id: u32) -> DeviceSpec {
        DeviceSpec {
            device_type: "vgpu-cuda".into(),
            extra: "addr=5".into(),
            pool,
            priority,
            vm_id,
        }
    }

    #[test]
    fn reads_current_entry() {
        let a =
            DeviceArgs::parse("-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1").unwrap();
        let e = a.find_vgpu("vgpu-cuda").unwrap();
        assert_eq!(e.device_type, "vgpu-cuda");
        assert_eq!(e.get("pool_id"), Some("A"));
        assert_eq!(e.get("priority"), Some("high"));
        assert_eq!(e.get("vm_id"), Some("1"));
        assert_eq!(e.get("addr"), Some("5"));
    }

    #[test]
    fn reads_legacy_stub_with_numeric_priority() {
        let a = DeviceArgs::parse("-device vgpu-stub,pool_id=B,priority=1,vm_id=3").unwrap();
        let e = a.find_vgpu("vgpu-cuda").unwrap();
        assert_eq!(e.device_type, "vgpu-stub");
        assert_eq!(e.get("priority"), Some("1"));
    }

    #[test]
    fn ignores_other_devices() {
        let a = DeviceArgs::parse("-device e1000,netdev=n0 -global PIIX4_PM.disable_s3=1").unwrap();
        assert!(a.find_vgpu("vgpu-cuda").is_none());
    }

    #[test]
    fn appends_new_entry_after_foreign_args() {
        let mut a = DeviceArgs::parse("-global PIIX4_PM.disable_s3=1 -rtc base=localtime").unwrap();
        a.set_vgpu(&spec(Pool::B, Priority::Medium, 42));
        assert_eq!(
            a.render(),
            "-global PIIX4_PM.disable_s3=1 -rtc base=localtime \
             -device vgpu-cuda,addr=5,pool_id=B,priority=medium,vm_id=42"
        );
    }

    #[test]
    fn replaces_legacy_entry_in_place_keeping_properties() {
        let mut a = DeviceArgs::parse(
            "-m 1 -device vgpu-stub,prefer_bar1_htod=on,pool_id=B,priority=1,vm_id=3,authoritative_shmem_libload=on -x y",
        )
        .unwrap();
        a.set_vgpu(&spec(Pool::A, Priority::High, 7));
        assert_eq!(
            a.render(),
            "-m 1 -device vgpu-cuda,prefer_bar1_htod=on,pool_id=A,priority=high,vm_id=7,authoritative_shmem_libload=on -x y"
        );
    }

    #[test]
    fn removes_only_the_vgpu_entry() {
        let mut a = DeviceArgs::parse(
            "-device e1000 -device vgpu-cuda,addr=5,pool_id=A,priority=low,vm_id=9 'x y'",
        )
        .unwrap();
        assert!(a.remove_vgpu("vgpu-cuda"));
        assert_eq!(a.tokens(), ["-device", "e1000", "x y"]);
        assert!(!a.remove_vgpu("vgpu-cuda"));
    }

    #[test]
    fn configured_type_is_recognised() {
        let mut a = DeviceArgs::parse("-device my-gpu,pool_id=A").unwrap();
        assert!(a.find_vgpu("vgpu-cuda").is_none());
        assert!(a.find_vgpu("my-gpu").is_some());
        let mut s = spec(Pool::A, Priority::Low, 1);
        s.device_type = "my-gpu".into();
        a.set_vgpu(&s);
        assert_eq!(a.render(), "-device my-gpu,pool_id=A,priority=low,vm_id=1");
    }

    #[test]
    fn double_comma_is_a_literal_comma() {
        let mut a = DeviceArgs::parse("-device vgpu-cuda,label=a,,b,pool_id=A").unwrap();
        let e = a.find_vgpu("vgpu-cuda").unwrap();
        assert_eq!(e.get("label"), Some("a,b"));
        a.set_vgpu(&spec(Pool::B, Priority::Low, 2));
        assert_eq!(
            a.render(),
            "-device vgpu-cuda,label=a,,b,pool_id=B,priority=low,vm_id=2"
        );
    }

    #[test]
    fn a_bare_device_flag_at_the_end_takes_the_new_entry() {
        for (before, after) in [
            (
                "-m 1 -device",
                "-m 1 -device vgpu-cuda,addr=5,pool_id=A,priority=low,vm_id=3",
            ),
            // The second flag is the first one's argument: only the third is bare.
            (
                "-device -device -device",
                "-device -device -device vgpu-cuda,addr=5,pool_id=A,priority=low,vm_id=3",
            ),
            (
                "-device -device",
                "-device -device -device vgpu-cuda,addr=5,pool_id=A,priority=low,vm_id=3",
            ),
        ] {
            let mut a = DeviceArgs::parse(before).unwrap();
            a.set_vgpu(&spec(Pool::A, Priority::Low, 3));
            assert_eq!(a.render(), after, "{before}");
            let e = a.find_vgpu("vgpu-cuda").expect(before);
            assert_eq!(e.get("vm_id"), Some("3"), "{before}");
        }
    }

    #[test]
    fn empty_properties_are_dropped_on_write() {
        for before in [
            "-device vgpu-cuda,",
            "-device vgpu-cuda,,,addr=5",
            "-device vgpu-stub,addr=5,",
        ] {
            let mut a = DeviceArgs::parse(before).unwrap();
            a.set_vgpu(&spec(Pool::B, Priority::High, 4));
            let written = a.render();
            let e = DeviceArgs::parse(&written)
                .unwrap()
                .find_vgpu("vgpu-cuda")
                .expect(before);
            assert_eq!(e.device_type, "vgpu-cuda", "{before} → {written}");
            assert_eq!(e.get("pool_id"), Some("B"), "{before} → {written}");
            assert!(e.props.iter().all(|p| !p.key.is_empty()), "{written}");
        }
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let e = DeviceArgs::parse("-device 'vgpu-cuda").unwrap_err();
        assert!(e.to_string().contains("'vgpu-cuda"));
    }

    fn foreign_token() -> impl Strategy<Value = String> {
        // Anything, including quotes, spaces, `$()`, `;` and unicode, except the device flag.
        proptest::string::string_regex("[ -~é\t\n]{0,12}")
            .unwrap()
            .prop_filter("not a device flag", |s| !is_device_flag(s))
    }

    proptest! {
        #[test]
        fn round_trip(tokens in proptest::collection::vec(foreign_token(), 0..8)) {
            let a = DeviceArgs::from_tokens(tokens.clone());
            let back = DeviceArgs::parse(&a.render()).unwrap();
            prop_assert_eq!(back.tokens(), &tokens[..]);
        }

        #[test]
        fn set_and_remove_keep_foreign_tokens(
            before in proptest::collection::vec(foreign_token(), 0..6),
            after in proptest::collection::vec(foreign_token(), 0..6),
            vm_id in 1u32..,
            legacy in any::<bool>(),
        ) {
            let mut tokens = before.clone();
            if legacy {
                tokens.push("-device".into());
                tokens.push("vgpu-stub,pool_id=B,priority=1,vm_id=3,keep=me".into());
            }
            tokens.extend(after.iter().cloned());
            let mut a = DeviceArgs::parse(&DeviceArgs::from_tokens(tokens).render()).unwrap();
            a.set_vgpu(&spec(Pool::A, Priority::High, vm_id));
            let mut b = DeviceArgs::parse(&a.render()).unwrap();
            let e = b.find_vgpu("vgpu-cuda").unwrap();
            let want = vm_id.to_string();
            prop_assert_eq!(e.get("vm_id"), Some(want.as_str()));
            prop_assert_eq!(e.get("priority"), Some("high"));
            if legacy {
                prop_assert_eq!(e.get("keep"), Some("me"));
            }
            prop_assert!(b.remove_vgpu("vgpu-cuda"));
            let mut expected = before.clone();
            expected.extend(after.iter().cloned());
            prop_assert_eq!(b.tokens(), &expected[..]);
        }
    }
}
