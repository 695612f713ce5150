//! An arbitrary state (raw JSON, or built from the bytes in the wire form) merged into
//! a reachable one with `try_merge`: never panics, errors leave the state unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = concord_fuzz::apply(data);
});
