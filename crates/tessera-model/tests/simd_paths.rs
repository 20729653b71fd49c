//! Every SIMD path gives the golden state hash. Forcing a path is process-wide, so this file
//! holds exactly one test and runs as its own process.

use tessera_model::fixtures::reference_run;
use tessera_tensor::hex;
use tessera_tensor::simd::{force_path, SimdPath};

mod common;

#[test]
fn every_simd_path_gives_the_golden_hash() {
    let mut tried = Vec::new();
    for path in SimdPath::ALL {
        if !path.supported() {
            eprintln!("skipping {}: not supported by this CPU", path.name());
            continue;
        }
        force_path(Some(path)).expect("force");
        let h = hex(&reference_run(20).expect("run"));
        force_path(None).expect("unforce");
        assert_eq!(h, common::GOLDEN_20_STEPS, "path {}", path.name());
        tried.push(path.name());
    }
    assert!(tried.contains(&"scalar"), "the scalar path always runs");
    eprintln!("paths checked: {tried:?}");
}
