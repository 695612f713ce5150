//! Arbitrary bytes as a wire message, JSON or binary (each input is tried as given and
//! as the body of a binary message): `wire::decode` and `SyncEngine::receive_bytes`
//! never panic, and a rejected message leaves the engine exactly as it was.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = concord_fuzz::decode(data);
});
