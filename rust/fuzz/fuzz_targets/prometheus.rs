#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| (fuzz_check::target("prometheus").run)(data));
