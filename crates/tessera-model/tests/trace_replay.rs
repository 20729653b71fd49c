//! The op trace of a full GPT training step: every operator replays to its recorded hash.

use std::collections::BTreeSet;

use tessera_model::fixtures::SONNETS;
use tessera_model::{text_batch, AdamWConfig, Gpt, GptConfig, Trainer};
use tessera_tensor::{TensorError, TraceMode};

fn one_traced_step() -> tessera_tensor::Trace {
    let cfg = GptConfig::preset("tiny").unwrap();
    let ctx = cfg.context;
    let mut tr = Trainer::new(Gpt::new(cfg, 5).unwrap(), AdamWConfig::for_run(10)).unwrap();
    // One plain step first, so the traced step has non-zero optimizer state.
    tr.step(&text_batch(SONNETS, 5, 0, 2, ctx).unwrap(), TraceMode::Off).unwrap();
    let b = text_batch(SONNETS, 5, 1, 2, ctx).unwrap();
    tr.step(&b, TraceMode::HashesAndInputs).unwrap().trace
}

#[test]
fn every_operator_of_a_gpt_step_replays_to_its_record() {
    let trace = one_traced_step();
    let kinds: BTreeSet<&str> = trace.entries.iter().map(|e| e.kernel.name()).collect();
    for want in ["embedding", "layer_norm", "matmul", "causal_softmax", "gelu", "cross_entropy"] {
        assert!(kinds.contains(want), "forward op {want} missing from trace");
    }
    for want in ["cross_entropy_backward", "layer_norm_backward", "softmax_backward", "embedding_backward"] {
        assert!(kinds.contains(want), "backward op {want} missing from trace");
    }
    assert!(kinds.contains("clip_grad_norm") && kinds.contains("adamw"), "optimizer ops missing");
    for (i, e) in trace.entries.iter().enumerate() {
        assert!(e.replay_recorded().unwrap(), "entry {i} ({}) does not replay", e.kernel.name());
    }
    assert_eq!(trace.prefix_chain().len(), trace.entries.len());
}

#[test]
fn replay_detects_tampering() {
    let trace = one_traced_step();
    let e = trace.entries.iter().find(|e| e.kernel.name() == "matmul").unwrap().clone();
    // A wrong recorded output is caught.
    let mut lying = e.clone();
    lying.output_hashes[0][0] ^= 1;
    assert!(!lying.replay_recorded().unwrap());
    // Inputs that do not match the recorded hashes are refused.
    let mut inputs = e.inputs.clone().unwrap();
    inputs[0].data_mut()[0] += 1.0;
    assert_eq!(e.replay(&inputs), Err(TensorError::ReplayInputs { kernel: "matmul" }));
    // A one-bit flip in one output changes the prefix chain from that entry on.
    let mut t2 = trace.clone();
    let k = t2.entries.len() / 2;
    t2.entries[k].output_hashes[0][5] ^= 0x10;
    let (a, b) = (trace.prefix_chain(), t2.prefix_chain());
    assert_eq!(a[..k], b[..k]);
    assert!(a[k..].iter().zip(&b[k..]).all(|(x, y)| x != y));
}
