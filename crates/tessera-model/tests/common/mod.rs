//! Constants shared by the integration tests.

/// State hash after 20 steps of `fixtures::reference_run` (tiny GPT, seed 1234, batch 4 × 64,
/// `AdamWConfig::for_run(20)`, the Sonnets). If this changes, the arithmetic changed: the commit
/// must say why.
pub const GOLDEN_20_STEPS: &str = "06c8ebb23b284311204022dee16da316a24d4a952e61f916b521416be77f0716";
