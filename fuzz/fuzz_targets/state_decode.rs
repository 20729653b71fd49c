//! Any bytes given to the checkpoint (state blob) decoder give a state or a typed error. The
//! expected shape is read from where a header would declare it (so well-formed blobs reach the
//! value checks), bounded to keep inputs small.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_coord::GlobalState;

fuzz_target!(|data: &[u8]| {
    let n = data.get(46..54).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) % (1 << 16)) as usize;
    let buffers = data.get(54).map_or(1, |&b| usize::from(b % 3));
    let _ = GlobalState::decode(data, &[7; 32], n, buffers);
});
