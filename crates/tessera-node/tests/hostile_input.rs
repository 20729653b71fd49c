//! The store and the key files against input that once hurt them (issue: hostile peers):
//! a member repeating its state report, a validation loss that is not a number, and a fresh
//! key file that anyone on the machine could read.

use std::path::PathBuf;

use tessera_coord::Record;
use tessera_node::{load_or_create_key, Store, StoreError};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 20,000 state reports from one member of one round leave one row (two, when it also
/// adopted the checkpoint), not 20,000.
#[test]
fn repeated_state_reports_keep_one_row() {
    let d = dir("reports");
    let mut store = Store::open(&d).unwrap();
    for i in 0..20_000u32 {
        let rec = Record::Report {
            round: 3,
            peer: [1; 32],
            state_hash: [i as u8; 32],
            agrees: i % 2 == 0,
            computed: true,
        };
        store.persist(&rec).unwrap();
    }
    assert_eq!(store.summary().unwrap().reports, 1, "one row per (round, peer)");
    let adopted =
        Record::Report { round: 3, peer: [1; 32], state_hash: [0; 32], agrees: true, computed: false };
    store.persist(&adopted).unwrap();
    let s = store.summary().unwrap();
    assert_eq!((s.reports, s.adopted), (2, 1), "the computed report and the adoption are both kept");
    let _ = std::fs::remove_dir_all(&d);
}

/// A validation loss that is not finite is a typed error, writes nothing, and the store goes
/// on (it used to become SQL NULL in a NOT NULL column and stop the coordinator).
#[test]
fn a_non_finite_validation_loss_is_refused_and_the_store_goes_on() {
    let d = dir("nan");
    let store = Store::open(&d).unwrap();
    for bad in [f64::NAN, f64::INFINITY] {
        let e = store.record_eval(2, 10, bad).unwrap_err();
        assert!(matches!(e, StoreError::NotFinite { round: 2, .. }), "{e}");
        assert!(e.to_string().contains("not a finite number"), "{e}");
    }
    store.record_eval(2, 11, 1.25).unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

/// A new key file is the owner's alone (mode 0600) and whole; it loads back as the same key.
#[test]
fn a_new_key_file_is_private_and_loads_back() {
    let d = dir("key");
    let path = d.join("sub").join("node.key");
    let key = load_or_create_key(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    assert!(!d.join("sub").join("node.key.tmp").exists(), "no temporary file is left");
    assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), key.to_bytes());
    std::fs::write(&path, "not hex").unwrap();
    let e = load_or_create_key(&path).unwrap_err().to_string();
    assert!(e.contains("64-digit hex key"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
