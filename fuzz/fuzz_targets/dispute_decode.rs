//! Any bytes given to the decoder of a dispute's operator-inputs blob (what a trainer serves
//! the referee) give the blob or a typed error; a blob that decodes re-encodes to the same
//! bytes, and replaying it against the entry it names itself (two colluding sides) gives
//! output hashes or a typed error, never a panic. Kernels whose static parameters size their
//! output (reshape, sums to a shape, expand, the embedding's backward) are left out of the
//! replay, as are inputs over 4096 values: the fuzzer would spend its time allocating.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_coord::{kernel_hash, OpInputs};
use tessera_tensor::{Kernel, Tensor};
use tessera_verify::EntryHashes;

fuzz_target!(|data: &[u8]| {
    let Ok(op) = OpInputs::decode(data) else { return };
    let sized = matches!(
        op.kernel,
        Kernel::Reshape { .. } | Kernel::SumToShape { .. } | Kernel::Expand { .. } | Kernel::EmbeddingBackward { .. }
    );
    let values: usize = op.inputs.iter().map(|i| i.1.len()).sum();
    if sized || values > 4096 {
        return;
    }
    let inputs = op.inputs.iter().filter_map(|(s, d)| Tensor::new(s, d.clone()).ok()).map(|t| t.hash()).collect();
    let named = EntryHashes { kernel: kernel_hash(&op.kernel), inputs, outputs: vec![] };
    let _ = op.replay(&named);
});
