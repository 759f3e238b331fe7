//! `cargo fuzz run bucket_message`: see `prism_mesh::fuzzing::bucket_message` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prism_mesh::fuzzing::bucket_message(data));
