//! `cargo fuzz run instance_record`: see `prism_mesh::fuzzing::instance_record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prism_mesh::fuzzing::instance_record(data));
