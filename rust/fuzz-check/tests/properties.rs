//! The fuzz targets under property-based inputs, on the stable toolchain: for each target, the
//! committed seeds mutated (bytes flipped, inserted, deleted, duplicated, spliced, dictionary
//! words inserted), a soup of its dictionary words, and inputs built to its grammar.
//!
//! `VGPU_FUZZ_CASES` sets the cases per target and strategy (`make test` runs a few hundred,
//! `make fuzz` many more); `VGPU_FUZZ_SEED` the seed, printed with every run and every failure.

use fuzz_check::target;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

const DEFAULT_CASES: u32 = 256;
const DEFAULT_SEED: u64 = 0x7667_7075_2d66_757a;

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

fn cases() -> u32 {
    env_number("VGPU_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n.clamp(1, u64::from(u32::MAX)) as u32)
}

fn seed() -> u64 {
    env_number("VGPU_FUZZ_SEED").unwrap_or(DEFAULT_SEED)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The committed corpus of `name`.
fn seeds(name: &str) -> Vec<Vec<u8>> {
    let dir = fuzz_dir().join("corpus").join(name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("a seed"))
        .collect();
    assert!(!seeds.is_empty(), "{} is empty", dir.display());
    seeds
}

/// The words of `dict/<name>.dict`, libFuzzer's dictionary format (`"word"` a line, with `\\`,
/// `\"` and `\xNN` escapes), which cargo-fuzz runs are given too.
fn dictionary(name: &str) -> Vec<Vec<u8>> {
    let path = fuzz_dir().join("dict").join(format!("{name}.dict"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut words = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let quoted = line
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{}: not a quoted word: {line}", path.display()));
        let mut word = Vec::new();
        let mut bytes = quoted.bytes();
        while let Some(b) = bytes.next() {
            if b != b'\\' {
                word.push(b);
                continue;
            }
            match bytes.next() {
                Some(b'x') => {
                    let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                    let hex = std::str::from_utf8(&hex).expect("hex digits");
                    word.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                }
                Some(other) => word.push(other),
                None => panic!("{}: dangling escape: {line}", path.display()),
            }
        }
        words.push(word);
    }
    assert!(!words.is_empty(), "{} is empty", path.display());
    words
}

#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    /// This input up to a point, then another seed from a point.
    Splice(usize, usize, usize),
    Word(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (at, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (at, 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (at, 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (at, any::<usize>(), any::<usize>()).prop_map(|(i, s, j)| Mutation::Splice(i, s, j)),
        (at, any::<usize>()).prop_map(|(i, w)| Mutation::Word(i, w)),
    ]
}

fn mutate(
    mut data: Vec<u8>,
    mutations: &[Mutation],
    seeds: &[Vec<u8>],
    words: &[Vec<u8>],
) -> Vec<u8> {
    for m in mutations {
        let len = data.len();
        let pos = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Overwrite(i, b) if len > 0 => data[i % len] = *b,
            Mutation::Overwrite(..) => data.push(0),
            Mutation::Insert(i, bytes) => {
                let at = pos(*i);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = pos(*i);
                let end = (at + n).min(len);
                data.drain(at..end);
            }
            Mutation::Duplicate(i, n) => {
                let at = pos(*i);
                let chunk: Vec<u8> = data[at..(at + n).min(len)].to_vec();
                data.splice(at..at, chunk);
            }
            Mutation::Splice(i, s, j) => {
                let other = &seeds[s % seeds.len()];
                data.truncate(pos(*i));
                data.extend_from_slice(&other[j % (other.len() + 1)..]);
            }
            Mutation::Word(i, w) => {
                let at = pos(*i);
                data.splice(at..at, words[w % words.len()].iter().copied());
            }
        }
    }
    data
}

/// A committed seed with a few mutations.
fn mutated_seeds(name: &str) -> BoxedStrategy<Vec<u8>> {
    let seeds = seeds(name);
    let words = dictionary(name);
    (any::<usize>(), prop::collection::vec(mutation(), 0..6))
        .prop_map(move |(s, ms)| mutate(seeds[s % seeds.len()].clone(), &ms, &seeds, &words))
        .boxed()
}

/// Dictionary words and short random text, run together.
fn word_soup(name: &str) -> BoxedStrategy<Vec<u8>> {
    let words = dictionary(name);
    let piece = prop_oneof![
        3 => prop::sample::select(words),
        1 => "\\PC{0,6}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(piece, 0..24)
        .prop_map(|pieces| pieces.concat())
        .boxed()
}

fn run(name: &str, what: &str, strategy: BoxedStrategy<Vec<u8>>) {
    let t = target(name);
    let (cases, seed) = (cases(), seed());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let result = runner.run(&strategy, |data| {
        (t.run)(&data);
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "{name} ({what}, VGPU_FUZZ_SEED={seed}, VGPU_FUZZ_CASES={cases}): {e}\n\
             add the failing input to rust/fuzz/corpus/{name}/ once fixed"
        );
    }
    println!("{name} ({what}): {cases} cases passed, VGPU_FUZZ_SEED={seed}");
}

fn run_all(name: &str, grammar: Option<BoxedStrategy<Vec<u8>>>) {
    run(name, "mutated seeds", mutated_seeds(name));
    run(name, "dictionary soup", word_soup(name));
    if let Some(grammar) = grammar {
        run(name, "grammar", grammar);
    }
}

fn pick(words: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(words).prop_map(str::to_string).boxed()
}

/// device-model-args words: QEMU options, the vgpu entry with its properties, and shell quoting.
fn dma_grammar() -> BoxedStrategy<Vec<u8>> {
    let prop_word = prop_oneof![
        pick(&["pool_id", "priority", "vm_id", "addr", "bus", "x", ""]),
        "[a-z_,=]{0,6}",
    ];
    let value = prop_oneof![
        pick(&[
            "A",
            "B",
            "a",
            "high",
            "low",
            "medium",
            "1",
            "0",
            "4294967296",
            "-3",
            "",
            "é"
        ]),
        "[ -~]{0,6}",
    ];
    let props = prop::collection::vec((prop_word, value), 0..5).prop_map(|props| {
        props
            .into_iter()
            .map(|(k, v)| format!(",{k}={v}"))
            .collect::<String>()
    });
    let entry = (
        pick(&["-device", "--device", "-global", "-m", "x"]),
        pick(&[
            "vgpu-cuda",
            "vgpu-stub",
            "my-gpu.v2",
            "e1000",
            "",
            "vgpu-cuda,,x",
        ]),
        props,
        pick(&["", "'", "\"", "\\", "$(x)", ";"]),
    )
        .prop_map(|(flag, ty, props, tail)| format!("{flag} {ty}{props}{tail}"));
    let quoted = "[ -~é\t\n]{0,10}".prop_map(|s| quoted_some_way(&s));
    prop::collection::vec(prop_oneof![3 => entry, 1 => quoted], 0..5)
        .prop_map(|words| words.join(" ").into_bytes())
        .boxed()
}

fn quoted_some_way(s: &str) -> String {
    match s.len() % 3 {
        0 => format!("'{}'", s.replace('\'', "'\\''")),
        1 => format!("\"{}\"", s.replace(['"', '\\'], "")),
        _ => s.to_string(),
    }
}

/// A function of the plugin API with arguments, keys and values drawn from the function table.
fn plugin_args_grammar() -> BoxedStrategy<Vec<u8>> {
    let functions: Vec<String> = registry::FUNCTIONS
        .iter()
        .flat_map(|f| [f.name.to_string(), f.name.replace('-', "_")])
        .chain([
            "".to_string(),
            "nope".to_string(),
            "forwarded-by".to_string(),
        ])
        .collect();
    let keys: Vec<String> = registry::functions::ARGS
        .iter()
        .flat_map(|a| [a.key.to_string(), a.key.replace('-', "_")])
        .chain([
            "forwarded-by".to_string(),
            "forwarded_by".to_string(),
            "".to_string(),
        ])
        .collect();
    let value = prop_oneof![
        pick(&[
            "true",
            "false",
            "yes",
            "no",
            "1",
            "0",
            "TRUE",
            "",
            "A",
            "B",
            "c",
            "high",
            "low",
            "medium",
            "HIGH",
            " medium",
            "42",
            "4294967295",
            "4294967296",
            "-1",
            "+1",
            "01",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5b",
            "0f8fad5",
            "0f8fad5b-d9cb",
            "OpaqueRef:NULL",
            "metrics",
            "health",
            "connections",
            "reload",
            "100",
            "101",
            "db-01",
            "a\tb",
            "\u{7f}",
            "é",
            "名前",
        ]),
        "\\PC{0,12}",
        "[ -~]{0,300}",
    ];
    (
        prop::sample::select(functions),
        prop::collection::vec((prop::sample::select(keys), value), 0..6),
    )
        .prop_map(|(function, args)| {
            let mut text = function;
            for (k, v) in args {
                text.push('\n');
                text.push_str(&k);
                text.push('=');
                text.push_str(&v);
            }
            text.into_bytes()
        })
        .boxed()
}

/// Any JSON value, with object keys drawn from xapi's records.
fn json_value() -> BoxedStrategy<Value> {
    let key = prop_oneof![
        pick(&[
            "uuid",
            "name_label",
            "power_state",
            "platform",
            "is_a_template",
            "is_a_snapshot",
            "is_control_domain",
            "resident_on",
            "other_config",
            "master",
            "device-model-args",
            "OpaqueRef:1",
            "OpaqueRef:2",
            "code",
            "message",
            "data",
        ]),
        "\\PC{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        pick(&[
            "Running",
            "Halted",
            "OpaqueRef:NULL",
            "-device vgpu-cuda,pool_id=A"
        ])
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// xapi answers: the envelope with a result or an error, records of VMs and hosts.
fn json_rpc_grammar() -> BoxedStrategy<Vec<u8>> {
    let vm = (json_value(), json_value(), any::<bool>(), "\\PC{0,8}").prop_map(
        |(platform, other, template, uuid)| {
            json!({"uuid": uuid, "name_label": "vm", "power_state": "Running",
                   "platform": platform, "is_a_template": template, "other_config": other,
                   "resident_on": "OpaqueRef:NULL"})
        },
    );
    let records = prop::collection::vec(("OpaqueRef:[0-9a-f]{1,4}", vm), 0..4)
        .prop_map(|vms| Value::Object(vms.into_iter().collect()));
    let result = prop_oneof![json_value(), records];
    let id = prop_oneof![
        Just(json!(7)),
        Just(json!("7")),
        Just(Value::Null),
        json_value()
    ];
    (result, id, json_value(), 0u8..4)
        .prop_map(|(result, id, error, shape)| {
            let answer = match shape {
                0 => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                1 => json!({"jsonrpc": "2.0", "id": id, "error": error}),
                2 => json!({"id": id, "result": result, "error": error}),
                _ => result,
            };
            answer.to_string().into_bytes()
        })
        .boxed()
}

/// `vgpu.conf`: its keys and sections with values of every TOML type.
fn config_grammar() -> BoxedStrategy<Vec<u8>> {
    let line = prop_oneof![
        pick(&[
            "[device]",
            "[restart]",
            "[pool]",
            "[mediator]",
            "[x]",
            "[[device]]"
        ])
        .prop_map(|s| s.to_string()),
        (
            pick(&[
                "db_path",
                "xapi",
                "xapi_user",
                "xapi_password_file",
                "xapi_insecure",
                "xapi_ca_file",
                "xapi_connect_timeout_s",
                "xapi_timeout_s",
                "lock_timeout_s",
                "mode",
                "python_path",
                "admin_path",
                "type",
                "extra",
                "shutdown_timeout_s",
                "refresh_timeout_s",
                "timeout_s",
                "socket",
                "enabled",
                "x",
            ]),
            prop_oneof![
                pick(&[
                    "0",
                    "1",
                    "-1",
                    "18446744073709551616",
                    "true",
                    "\"local\"",
                    "\"remote\"",
                    "\"vgpu-cuda\"",
                    "\"addr=5\"",
                    "\"a b\"",
                    "\"pool_id=A\"",
                    "\"x,,pool_id=B\"",
                    "1.5",
                    "[]",
                    "{}",
                    "\"\"",
                    "'lit'",
                    "\"\"\"multi\nline\"\"\"",
                    "1979-05-27T07:32:00Z",
                    "\"\\u00e9\"",
                ]),
                "\"[ -~]{0,12}\"",
            ],
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    prop::collection::vec(line, 0..10)
        .prop_map(|lines| lines.join("\n").into_bytes())
        .boxed()
}

/// Mediator answers: a header (the magic or not, any status, a length near the body's) and a
/// body of text or bytes.
fn mediator_grammar() -> BoxedStrategy<Vec<u8>> {
    (
        prop_oneof![3 => Just(mediator::MAGIC), 1 => any::<u32>()],
        any::<u32>(),
        -2i64..3,
        prop_oneof![
            "\\PC{0,40}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ],
        0usize..=12,
    )
        .prop_map(|(magic, status, skew, body, header_len)| {
            let len = (body.len() as i64 + skew).max(0) as u32;
            let mut bytes = Vec::new();
            for word in [magic, status, len] {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            bytes.truncate(header_len);
            if header_len == 12 {
                bytes.extend_from_slice(&body);
            }
            bytes
        })
        .boxed()
}

/// Prometheus lines: names, labels with escapes, Go floats, timestamps.
fn prometheus_grammar() -> BoxedStrategy<Vec<u8>> {
    let label = (
        "[a-zA-Z_][a-zA-Z0-9_]{0,6}|[0-9]x|",
        prop_oneof![pick(&["\\\\", "\\\"", "\\n", "\\t", "\\"]), "[ -~é]{0,6}"],
    )
        .prop_map(|(k, v)| format!("{k}=\"{v}\""));
    let line = (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}|[0-9]a|",
        prop::collection::vec(label, 0..4),
        any::<bool>(),
        prop_oneof![
            pick(&[
                "NaN", "+Inf", "-Inf", "Inf", "inf", "nan", "1e308", "1e309", "0x10", "1_0", "-0"
            ]),
            any::<f64>().prop_map(|f| f.to_string()),
        ],
        prop_oneof![
            Just(String::new()),
            any::<i64>().prop_map(|t| format!(" {t}")),
            Just(" x".into())
        ],
        pick(&["", "# HELP x y", "# TYPE x counter", " ", "\t"]),
    )
        .prop_map(|(name, labels, braces, value, ts, comment)| {
            let labels = if braces || !labels.is_empty() {
                format!("{{{}}}", labels.join(","))
            } else {
                String::new()
            };
            format!("{name}{labels} {value}{ts}\n{comment}")
        });
    prop::collection::vec(line, 0..8)
        .prop_map(|lines| lines.join("\n").into_bytes())
        .boxed()
}

#[test]
fn device_model_args() {
    run_all("device_model_args", Some(dma_grammar()));
}

#[test]
fn plugin_args() {
    run_all("plugin_args", Some(plugin_args_grammar()));
}

#[test]
fn json_rpc_answer() {
    run_all("json_rpc_answer", Some(json_rpc_grammar()));
}

#[test]
fn config() {
    run_all("config", Some(config_grammar()));
}

#[test]
fn plugin_answer() {
    run_all("plugin_answer", None);
}

#[test]
fn mediator_frame() {
    run_all("mediator_frame", Some(mediator_grammar()));
}

#[test]
fn prometheus() {
    run_all("prometheus", Some(prometheus_grammar()));
}
