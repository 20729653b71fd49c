//! Built-in fixtures: the embedded default text and the reference determinism run.

use tessera_tensor::Hash;

use crate::{text_batch, AdamWConfig, Gpt, GptConfig, ModelError, Trainer};

/// The Sonnets (public domain), embedded so tests and the default run need no files.
pub const SONNETS: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/sonnets.txt"));

/// Settings of the reference determinism run: `tiny` preset, batch 4 × 64, seed 1234.
pub const REFERENCE_SEED: u64 = 1234;
pub const REFERENCE_BATCH: usize = 4;

/// Trains the `tiny` GPT for `steps` steps on the Sonnets on the current rayon pool and
/// returns its state hash.
pub fn reference_run(steps: u64) -> Result<Hash, ModelError> {
    let cfg = GptConfig::preset("tiny")?;
    let ctx = cfg.context;
    let model = Gpt::new(cfg, REFERENCE_SEED)?;
    let opt = AdamWConfig::for_run(steps);
    let mut tr = Trainer::new(model, opt)?;
    for s in 0..steps {
        let b = text_batch(SONNETS, REFERENCE_SEED, s, REFERENCE_BATCH, ctx)?;
        tr.step(&b, tessera_tensor::TraceMode::Off)?;
    }
    Ok(tr.state_hash())
}
