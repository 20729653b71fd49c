//! Constants shared by the integration tests.

/// State hash after 20 steps of `fixtures::reference_run` (tiny GPT, seed 1234, batch 4 × 64,
/// `AdamWConfig::for_run(20)`, the Sonnets). If this changes, the arithmetic changed: the commit
/// must say why.
pub const GOLDEN_20_STEPS: &str = "1d5262e7c25b529dcd24666ef104696bad7493f6221cbdee320afec53e1dd6da";
