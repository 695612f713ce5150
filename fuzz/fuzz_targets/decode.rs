//! Arbitrary bytes as a wire message: `wire::decode` and `SyncEngine::receive_bytes`
//! never panic, and a rejected message leaves the engine exactly as it was.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = concord_fuzz::decode(data);
});
