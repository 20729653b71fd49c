//! The determinism reference run (what `tessera bench reference-run` prints), as a small
//! binary that builds without the networking stack, for `scripts/check-build-determinism.sh`.
//! Usage: `reference_run [THREADS]`; `TESSERA_SIMD=scalar|avx2|avx512` forces a kernel path.

use tessera_tensor::simd::{force_path, SimdPath};

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |t| t.parse().expect("THREADS is a number"));
    if let Ok(name) = std::env::var("TESSERA_SIMD") {
        let path = SimdPath::parse(&name).unwrap_or_else(|e| panic!("TESSERA_SIMD={name}: {e}"));
        if let Err(e) = force_path(Some(path)) {
            eprintln!("cannot run {name}: {e}");
            std::process::exit(2);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let h = pool.install(|| tessera_model::fixtures::reference_run(20)).expect("reference run");
    println!("state-hash: {}", tessera_tensor::hex(&h));
}
