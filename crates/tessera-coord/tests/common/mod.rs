//! What the coordinator's and the trainer's tests share.

use std::path::PathBuf;

use tessera_data::{ingest_bytes, Dataset, IngestOptions};
use tessera_model::fixtures::SONNETS;

/// The Sonnets as a dataset, built once per test process (`name` keeps test files apart).
pub fn dataset(name: &str) -> Dataset {
    let dir: PathBuf = std::env::temp_dir().join(format!("tessera-{name}-test-{}", std::process::id()));
    if let Ok(ds) = Dataset::open(&dir) {
        return ds;
    }
    let tmp = dir.with_extension(format!("tmp{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    let _ = std::fs::remove_dir_all(&tmp);
    let opts = IngestOptions { shard_tokens: 8192, ..IngestOptions::default() };
    ingest_bytes(SONNETS, "sonnets", &tmp, &opts).unwrap();
    let _ = std::fs::rename(&tmp, &dir);
    Dataset::open(&dir).unwrap()
}
