//! Every differentiable operator's gradient against central finite differences.

use tessera_tensor::rng::Philox;
use tessera_tensor::{Graph, Tensor, TraceMode, Var};

fn rand(shape: &[usize], salt: u64, scale: f32) -> Tensor {
    let r = Philox::new(salt);
    let n: usize = shape.iter().product();
    Tensor::new(shape, (0..n as u64).map(|i| r.normal(0, i) * scale).collect()).unwrap()
}

/// Builds `L = Σ f(inputs) · R` for a fixed random `R`, and checks dL/d(input) for every input
/// marked differentiable against finite differences at up to 24 positions each.
fn check(name: &str, inputs: Vec<(Tensor, bool)>, f: impl Fn(&mut Graph, &[Var]) -> Var) {
    let loss = |xs: &[Tensor]| -> (f32, Vec<Option<Tensor>>) {
        let mut g = Graph::new(TraceMode::Off);
        let vs: Vec<Var> = xs.iter().zip(&inputs).map(|(x, (_, d))| g.leaf(x.clone(), *d)).collect();
        let y = f(&mut g, &vs);
        let shape = g.value(y).shape().to_vec();
        let r = g.leaf(rand(&shape, 99, 1.0), false);
        let p = g.mul(y, r);
        let l = g.sum_all(p);
        let val = g.value(l).item();
        let grads = g.backward(l);
        (val, vs.iter().map(|&v| grads.get(v).cloned()).collect())
    };
    let base: Vec<Tensor> = inputs.iter().map(|(t, _)| t.clone()).collect();
    let (_, grads) = loss(&base);
    for (idx, (t, diff)) in inputs.iter().enumerate() {
        if !diff {
            continue;
        }
        let g = grads[idx].as_ref().unwrap_or_else(|| panic!("{name}: no grad for input {idx}"));
        assert_eq!(g.shape(), t.shape(), "{name}: grad shape");
        let n = t.numel();
        let step = (n / 24).max(1);
        for e in (0..n).step_by(step) {
            let eps = 1e-2f32;
            let mut xs = base.clone();
            xs[idx].data_mut()[e] += eps;
            let (lp, _) = loss(&xs);
            xs[idx].data_mut()[e] -= 2.0 * eps;
            let (lm, _) = loss(&xs);
            let fd = (lp - lm) / (2.0 * eps);
            let an = g.data()[e];
            let tol = 2e-2 * (1.0 + fd.abs().max(an.abs()));
            assert!((fd - an).abs() <= tol, "{name} input {idx} elem {e}: fd {fd} vs analytic {an}");
        }
    }
}

#[test]
fn matmul_all_transposes_and_batched() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { rand(&[4, 3], 1, 1.0) } else { rand(&[3, 4], 1, 1.0) };
        let b = if tb { rand(&[5, 4], 2, 1.0) } else { rand(&[4, 5], 2, 1.0) };
        check("matmul", vec![(a, true), (b, true)], |g, v| g.matmul(v[0], v[1], ta, tb));
    }
    let a = rand(&[2, 3, 3, 4], 3, 1.0);
    let b = rand(&[2, 3, 5, 4], 4, 1.0);
    check("batched matmul", vec![(a, true), (b, true)], |g, v| g.matmul(v[0], v[1], false, true));
}

#[test]
fn elementwise_with_broadcast() {
    let a = rand(&[3, 4], 5, 1.0);
    let b = rand(&[4], 6, 1.0);
    check("add", vec![(a.clone(), true), (b.clone(), true)], |g, v| g.add(v[0], v[1]));
    check("sub", vec![(a.clone(), true), (b.clone(), true)], |g, v| g.sub(v[0], v[1]));
    check("mul", vec![(a.clone(), true), (b, true)], |g, v| g.mul(v[0], v[1]));
    let c = rand(&[3, 4], 7, 1.0);
    check("mul same", vec![(a.clone(), true), (c, true)], |g, v| g.mul(v[0], v[1]));
    check("scale", vec![(a.clone(), true)], |g, v| g.scale(v[0], -1.5));
    check("reshape", vec![(a.clone(), true)], |g, v| g.reshape(v[0], &[2, 6]));
}

#[test]
fn reductions() {
    let a = rand(&[3, 5], 8, 1.0);
    check("sum_all", vec![(a.clone(), true)], |g, v| g.sum_all(v[0]));
    check("mean_all", vec![(a, true)], |g, v| g.mean_all(v[0]));
}

#[test]
fn activations() {
    let a = rand(&[4, 6], 9, 1.5);
    check("gelu", vec![(a.clone(), true)], |g, v| g.gelu(v[0]));
    // Keep ReLU inputs away from the kink at 0, where finite differences are meaningless.
    let mut b = a.clone();
    b.data_mut().iter_mut().for_each(|x| *x += x.signum() * 0.1);
    check("relu", vec![(b, true)], |g, v| g.relu(v[0]));
}

#[test]
fn layer_norm() {
    let x = rand(&[3, 8], 10, 2.0);
    let gm = rand(&[8], 11, 1.0);
    let b = rand(&[8], 12, 1.0);
    check("layer_norm", vec![(x, true), (gm, true), (b, true)], |g, v| g.layer_norm(v[0], v[1], v[2], 1e-5));
}

#[test]
fn attention_pieces() {
    let s = rand(&[2, 2, 4, 4], 13, 1.0);
    check("causal_softmax", vec![(s, true)], |g, v| g.causal_softmax(v[0], 0.5));
    let x = rand(&[2, 3, 6], 14, 1.0);
    check("split_heads", vec![(x, true)], |g, v| g.split_heads(v[0], 3));
    let y = rand(&[2, 3, 4, 2], 15, 1.0);
    check("merge_heads", vec![(y, true)], |g, v| g.merge_heads(v[0]));
}

#[test]
fn embedding_and_cross_entropy() {
    let table = rand(&[5, 3], 16, 1.0);
    let ids = Tensor::new(&[6], vec![0.0, 3.0, 3.0, 1.0, 4.0, 3.0]).unwrap();
    check("embedding", vec![(table, true)], move |g, v| g.embedding(v[0], &ids));
    let logits = rand(&[4, 5], 17, 2.0);
    let targets = Tensor::new(&[4], vec![1.0, 0.0, 4.0, 2.0]).unwrap();
    check("cross_entropy", vec![(logits, true)], move |g, v| g.cross_entropy(v[0], &targets));
}

#[test]
fn shared_node_gradients_accumulate() {
    // y = x·x uses x twice; dy/dx = 2x.
    let x = rand(&[2, 3], 18, 1.0);
    check("x*x", vec![(x, true)], |g, v| g.mul(v[0], v[0]));
}
