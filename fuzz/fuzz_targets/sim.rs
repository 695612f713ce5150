//! A simulator program decoded by `arbitrary` (writes, removals, collapses, syncs,
//! pushes, deliveries under loss and duplication, partitions, snapshots, crashes and
//! restarts, time passing): after healing and quiescing, the simulator's checks hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    concord_fuzz::sim(data);
});
