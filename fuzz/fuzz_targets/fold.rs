//! A simulator program of counter increments and removals decoded by `arbitrary`, with
//! folding on and durable crashes, across a rolling upgrade when it asks for one:
//! after healing and quiescing, the simulator's checks hold and every counter's total
//! counts each increment once, unless a removal had seen it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    concord_fuzz::fold(data);
});
