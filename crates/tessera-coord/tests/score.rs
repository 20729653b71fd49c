//! Scoring separates an honest update from one trained on the wrong data (compared on the
//! same assigned batches) and from a random one of the same norm (on the held-out set).

mod common;

use std::sync::Arc;

use tessera_coord::*;
use tessera_sync::decode_update;

#[test]
fn an_honest_update_fits_its_own_data_and_helps_the_held_out_set() {
    let ds = common::dataset("score");
    let cfg = RunConfig::default().with(|c| {
        c.inner_steps = 20;
        c.batch = 4;
        c.codec = tessera_sync::ValueCodec::F32;
    });
    let spec = Arc::new(RunSpec::new(cfg).unwrap());
    // Past the first rounds, where any update mostly learns the byte statistics every batch
    // shares: one trainer's run of `rounds` rounds.
    let rounds = 6;
    let mut w = Worker::new(spec.clone());
    let mut g = spec.initial_state();
    let train = |w: &mut Worker, g: &GlobalState, slot: u64| {
        let unit = Assignment { peer: [1; 32], data_round: g.round, slot };
        let t = w.train(g, &g.hash(), &unit, &ds, &mut |_| {}).unwrap();
        decode_update(&t.update, spec.expected()).unwrap().values
    };
    for _ in 0..rounds {
        let v = train(&mut w, &g, 0);
        g.apply(&spec.outer, Some(&v)).unwrap();
    }
    let claimed = (g.round, 0);
    let honest = train(&mut w, &g, 0);
    // Trained on slot 7's batches while assigned slot 0 (the worker retrains the round from
    // the inner state it began with).
    let wrong = train(&mut w, &g, 7);
    let norm = honest.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let noise: Vec<f32> = (0..honest.len() as u64)
        .map(|i| (blake3::hash(&i.to_le_bytes()).as_bytes()[0] as f32) - 127.5)
        .collect();
    let nn = noise.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let random: Vec<f32> = noise.iter().map(|x| (f64::from(*x) * norm / nn) as f32).collect();
    let s = |v: &[f32]| score(&spec, &ds, &g, v, claimed, 8).unwrap();
    let (h, w, r) = (s(&honest), s(&wrong), s(&random));
    eprintln!("honest {h:?}\nwrong  {w:?}\nrandom {r:?}");
    assert!(h.held_out > 0.0 && h.own > 0.0, "an honest update lowers the loss");
    assert!(
        h.own > 2.0 * w.own,
        "on the assigned batches the honest update gains far more than one trained elsewhere"
    );
    assert!(
        w.unseen > w.own,
        "the wrong-data update gains no more on the assigned batches than on unseen ones"
    );
    assert!(r.held_out < 0.0 && r.own < 0.0, "a random update of honest norm hurts");
    assert!(matches!(score(&spec, &ds, &g, &honest, claimed, 0), Err(CoordError::Config(_))));
}
