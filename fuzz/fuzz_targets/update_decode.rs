//! Any bytes given to the update decoder give a validated update or a typed error. The
//! expected shape is taken from the first bytes, so both small and large layouts are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_sync::{decode_update, Algorithm, Expected};

fuzz_target!(|data: &[u8]| {
    let n = data.first().map_or(0, |&b| usize::from(b) * 97);
    let want = Expected { layout_hash: [7; 32], n, max_norm: Some(1e6), algorithm: Algorithm::DiLoCo, codec: None };
    let _ = decode_update(data, &want);
});
