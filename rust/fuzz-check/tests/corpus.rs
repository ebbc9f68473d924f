//! Every committed corpus file (`rust/fuzz/corpus/<target>/`) through its target: the seeds,
//! and the inputs that once crashed a parser, kept as regression cases.

use fuzz_check::{target, TARGETS};
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    for t in TARGETS {
        let n = files(&corpus_dir().join(t.name)).len();
        assert!(n >= 3, "corpus/{} holds {n} files, expected seeds", t.name);
    }
    for entry in std::fs::read_dir(corpus_dir()).expect("the corpus directory") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_str().expect("a UTF-8 name");
        assert!(
            TARGETS.iter().any(|t| t.name == name),
            "corpus/{name} has no target"
        );
    }
}

fn replay(name: &str) {
    let t = target(name);
    let files = files(&corpus_dir().join(name));
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| (t.run)(&data));
        assert!(outcome.is_ok(), "{name} panics on {}", file.display());
    }
    println!("{name}: {} corpus files replayed", files.len());
}

#[test]
fn device_model_args() {
    replay("device_model_args");
}

#[test]
fn plugin_args() {
    replay("plugin_args");
}

#[test]
fn json_rpc_answer() {
    replay("json_rpc_answer");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn plugin_answer() {
    replay("plugin_answer");
}

#[test]
fn mediator_frame() {
    replay("mediator_frame");
}

#[test]
fn prometheus() {
    replay("prometheus");
}
