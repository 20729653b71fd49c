//! The models learn: loss falls well below its starting value.

use tessera_model::fixtures::SONNETS;
use tessera_model::{text_batch, AdamWConfig, Batch, Gpt, GptConfig, Mlp, MlpConfig, Trainer};
use tessera_tensor::rng::Philox;
use tessera_tensor::{Tensor, TraceMode};

#[test]
fn tiny_gpt_learns_the_sonnets() {
    let cfg = GptConfig::preset("tiny").unwrap();
    let ctx = cfg.context;
    let steps = 150;
    let mut tr = Trainer::new(Gpt::new(cfg, 3).unwrap(), AdamWConfig::for_run(steps)).unwrap();
    let held_out = text_batch(SONNETS, 999, 0, 8, ctx).unwrap();
    let before = tr.eval_loss(&held_out).unwrap();
    for s in 0..steps {
        tr.step(&text_batch(SONNETS, 3, s, 8, ctx).unwrap(), TraceMode::Off).unwrap();
    }
    let after = tr.eval_loss(&held_out).unwrap();
    // Uniform over 256 bytes is ln 256 ≈ 5.55; character frequencies alone give about 3.3.
    assert!((before - 5.55).abs() < 0.1, "initial loss {before}");
    assert!(after < 2.9, "loss only fell from {before} to {after}");
}

/// Two Gaussian blobs per class in 8-D: class = which quadrant of the first two coordinates.
fn blobs(seed: u64, n: usize) -> Batch {
    let r = Philox::new(seed);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n as u64 {
        let class = r.below(1, i, 4);
        for f in 0..8u64 {
            let centre = match f {
                0 => {
                    if class & 1 == 1 {
                        2.0
                    } else {
                        -2.0
                    }
                }
                1 => {
                    if class & 2 == 2 {
                        2.0
                    } else {
                        -2.0
                    }
                }
                _ => 0.0,
            };
            x.push(centre + r.normal(2, i * 8 + f));
        }
        y.push(class as f32);
    }
    Batch { inputs: Tensor::new(&[n, 8], x).unwrap(), targets: Tensor::new(&[n], y).unwrap() }
}

#[test]
fn mlp_classifier_learns_blobs() {
    let cfg = MlpConfig { inputs: 8, hidden: vec![32], classes: 4 };
    let opt = AdamWConfig { lr: 1e-2, ..AdamWConfig::for_run(200) };
    let mut tr = Trainer::new(Mlp::new(cfg, 1).unwrap(), opt).unwrap();
    let test = blobs(77, 512);
    let before = tr.eval_loss(&test).unwrap();
    for s in 0..200 {
        tr.step(&blobs(s, 64), TraceMode::Off).unwrap();
    }
    let after = tr.eval_loss(&test).unwrap();
    assert!(after < 0.2 && after < before / 4.0, "mlp loss {before} -> {after}");
}

#[test]
fn bad_batches_are_typed_errors() {
    let cfg = GptConfig::preset("tiny").unwrap();
    let mut tr = Trainer::new(Gpt::new(cfg, 1).unwrap(), AdamWConfig::default()).unwrap();
    let too_long = Batch { inputs: Tensor::zeros(&[1, 65]), targets: Tensor::zeros(&[1, 65]) };
    assert!(tr.step(&too_long, TraceMode::Off).is_err());
    let bad_id = Batch { inputs: Tensor::full(&[1, 4], 300.0), targets: Tensor::zeros(&[1, 4]) };
    assert!(tr.step(&bad_id, TraceMode::Off).is_err());
    let frac = Batch { inputs: Tensor::zeros(&[1, 4]), targets: Tensor::full(&[1, 4], 0.5) };
    assert!(tr.step(&frac, TraceMode::Off).is_err());
    assert!(text_batch(b"short", 1, 0, 1, 64).is_err());
    // Nothing was changed by the refused steps.
    assert_eq!(tr.opt.step, 0);
}
