//! Any bytes given to the control-message decoder give a message or a typed error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_wire::decode(data);
});
