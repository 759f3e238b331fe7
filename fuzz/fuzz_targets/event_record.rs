//! `cargo fuzz run event_record`: see `prism_mesh::fuzzing::event_record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prism_mesh::fuzzing::event_record(data));
