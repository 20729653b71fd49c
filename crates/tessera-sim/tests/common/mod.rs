//! What the simulator's test files share: the embedded Sonnets as a dataset, and peer ids.

use std::path::PathBuf;

use tessera_data::{ingest_bytes, Dataset, IngestOptions};
use tessera_model::fixtures::SONNETS;

/// The Sonnets as a dataset in a directory of its own (`file`-`name`), so that tests running
/// in parallel never share or remove each other's files.
pub fn dataset(file: &str, name: &str) -> Dataset {
    let dir: PathBuf = std::env::temp_dir().join(format!("tessera-{file}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = IngestOptions { shard_tokens: 8192, ..IngestOptions::default() };
    ingest_bytes(SONNETS, "sonnets", &dir, &opts).unwrap();
    Dataset::open(&dir).unwrap()
}

/// Peer `i`'s id.
pub fn pid(i: u8) -> [u8; 32] {
    [i; 32]
}
