//! `cargo fuzz run ttl_header`: see `prism_mesh::fuzzing::ttl_header` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prism_mesh::fuzzing::ttl_header(data));
