//! Any bytes given to the ledger's record decoder (a stored row or a fetched log entry) give
//! a record or a typed error; a record that decodes re-encodes to the same bytes, and a
//! chain of one such record is checked (signature, link, rules) without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_ledger::{verify, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        assert_eq!(r.encode(), data, "a decoded record re-encodes to its bytes");
        let _ = verify(&[0x11; 32], std::slice::from_ref(&r));
    }
});
