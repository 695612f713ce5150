//! Bytes as a simulator program (writes, removals, syncs, pushes, faults, partitions,
//! crashes): after healing and quiescing, every replica holds the same state.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    concord_fuzz::converge(data);
});
