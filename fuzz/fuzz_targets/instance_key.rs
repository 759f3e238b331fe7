//! `cargo fuzz run instance_key`: see `prism_mesh::fuzzing::instance_key` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prism_mesh::fuzzing::instance_key(data));
