//! A large valid message built from a compact description (many dots with chosen
//! strides, contexts full of gaps, claims far ahead, siblings, entries, removal notes,
//! nested counters), in JSON and binary, applied by a receiver: a refusal changes
//! nothing; an acceptance keeps it consistent, convergent and unpoisoned.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = concord_fuzz::large(data);
});
