//! Any bytes given to the revealed local-state decoder (a spot check's blob) give a state or a
//! typed error; a state that decodes re-encodes to the same bytes. The model size is read from
//! the input's first byte, so well-formed blobs of small models are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_coord::LocalState;

fuzz_target!(|data: &[u8]| {
    let Some((&n, blob)) = data.split_first() else { return };
    if let Ok(s) = LocalState::decode(blob, usize::from(n)) {
        assert_eq!(s.encode(), blob, "a decoded state re-encodes to its bytes");
    }
});
