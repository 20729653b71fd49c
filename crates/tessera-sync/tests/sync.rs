//! Codecs, the update format, aggregation and the outer algorithms' defining properties.

use tessera_sync::*;
use tessera_tensor::rng::Philox;

fn randv(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let r = Philox::new(seed);
    (0..n as u64).map(|i| r.normal(1, i) * scale).collect()
}

const LAYOUT: [u8; 32] = [7; 32];

#[test]
fn codecs_round_trip_with_exact_byte_counts() {
    let x = randv(10_000, 1, 0.01);
    let n = x.len();
    // (codec, expected payload bytes for 10 000 values: two full 4096 chunks + one of 1808)
    let cases = [
        (Codec::dense(ValueCodec::F32, 4096), 40_000),
        (Codec::dense(ValueCodec::Int8, 4096), 3 * 4 + 10_000),
        (Codec::dense(ValueCodec::TwoBit, 4096), 3 * 16 + 1024 + 1024 + 452),
        (Codec::dense(ValueCodec::Sign, 4096), 3 * 4 + 512 + 512 + 226),
        // top-64 per chunk: 64 indices × 12 bits = 96 bytes, then the 64 values.
        (Codec::sparse(ValueCodec::TwoBit, 4096, 64), 3 * (96 + 16 + 16)),
        (Codec::sparse(ValueCodec::F32, 4096, 64), 3 * (96 + 256)),
    ];
    for (codec, bytes) in cases {
        let p = codec.encode(&x);
        assert_eq!(p.len(), bytes, "{codec:?}");
        assert_eq!(codec.encoded_len(n), bytes);
        let y = codec.decode(&p, n).unwrap();
        assert_eq!(y.len(), n);
        // Decoding is deterministic, and re-encoding what was decoded is stable in size.
        assert_eq!(codec.decode(&p, n).unwrap(), y);
        assert!(codec.decode(&p[..p.len() - 1], n).is_err());
    }
    let f = Codec::dense(ValueCodec::F32, 4096);
    assert_eq!(f.decode(&f.encode(&x), n).unwrap(), x, "f32 is lossless");
    // int8 error is within half a quantization step wherever it did not clip.
    let q = Codec::dense(ValueCodec::Int8, 4096);
    let y = q.decode(&q.encode(&x), n).unwrap();
    let scale = 6.0 * 0.01 / 256.0;
    let close = x.iter().zip(&y).filter(|(a, b)| (*a - *b).abs() <= 0.6 * scale).count();
    assert!(close as f64 > 0.99 * n as f64, "{close}");
}

#[test]
fn top_k_sends_exactly_k_per_chunk_and_the_largest() {
    let x = randv(8192, 2, 1.0);
    let c = Codec::sparse(ValueCodec::F32, 4096, 64);
    let (y, support) = c.decode_with_support(&c.encode(&x), x.len()).unwrap();
    let support = support.unwrap();
    assert_eq!(support.len(), 128);
    for chunk in 0..2 {
        let nz = y[chunk * 4096..(chunk + 1) * 4096].iter().filter(|v| **v != 0.0).count();
        assert_eq!(nz, 64);
        let mut mags: Vec<f32> = x[chunk * 4096..(chunk + 1) * 4096].iter().map(|v| v.abs()).collect();
        mags.sort_by(|a, b| b.total_cmp(a));
        let kth = mags[63];
        for &i in support.iter().filter(|&&i| (i as usize) / 4096 == chunk) {
            assert!(x[i as usize].abs() >= kth);
            assert_eq!(y[i as usize], x[i as usize]);
        }
    }
}

#[test]
fn update_format_rejects_bad_input_with_typed_errors() {
    let x = randv(5000, 3, 0.1);
    let codec = Codec::dense(ValueCodec::Int8, 4096);
    let bytes = encode_update(Algorithm::DiLoCo, codec, LAYOUT, 9, &x);
    assert_eq!(bytes.len(), HEADER_BYTES + codec.encoded_len(5000));
    let want = Expected {
        layout_hash: LAYOUT,
        n: 5000,
        max_norm: Some(100.0),
        algorithm: Algorithm::DiLoCo,
        codec: None,
    };
    let d = decode_update(&bytes, &want).unwrap();
    assert_eq!((d.header.round, d.header.algorithm), (9, Algorithm::DiLoCo));
    // The header must name the run's algorithm and (when given) its codec.
    let demo = Expected { algorithm: Algorithm::DeMo, ..want.clone() };
    assert!(matches!(decode_update(&bytes, &demo), Err(SyncError::Malformed(m)) if m.contains("not demo")));
    assert!(decode_update(&bytes, &Expected { codec: Some(codec), ..want.clone() }).is_ok());
    let f32s = Expected { codec: Some(Codec::dense(ValueCodec::F32, 4096)), ..want.clone() };
    assert!(matches!(decode_update(&bytes, &f32s), Err(SyncError::Malformed(m)) if m.contains("codec")));
    let other = Expected { layout_hash: [8; 32], ..want.clone() };
    assert_eq!(decode_update(&bytes, &other), Err(SyncError::Layout));
    let longer = Expected { n: 5001, ..want.clone() };
    assert!(matches!(decode_update(&bytes, &longer), Err(SyncError::Length { .. })));
    assert!(matches!(decode_update(&bytes[..bytes.len() - 3], &want), Err(SyncError::Length { .. })));
    let tight = Expected { max_norm: Some(0.01), ..want.clone() };
    assert!(matches!(decode_update(&bytes, &tight), Err(SyncError::NormTooLarge { .. })));
    let mut nan = x.clone();
    nan[17] = f32::NAN;
    let f32c = Codec::dense(ValueCodec::F32, 4096);
    let b = encode_update(Algorithm::DiLoCo, f32c, LAYOUT, 0, &nan);
    assert_eq!(decode_update(&b, &want), Err(SyncError::NonFinite { index: 17 }));
    let mut bad = bytes.clone();
    bad[5] = 99;
    assert!(matches!(decode_update(&bad, &want), Err(SyncError::Malformed(_))));
    // Random garbage and random corruptions never panic.
    let r = Philox::new(4);
    for t in 0..2000u64 {
        let len = r.below(1, t, 200) as usize;
        let garbage: Vec<u8> = (0..len as u64).map(|i| r.u64(2, t * 1000 + i) as u8).collect();
        let _ = decode_update(&garbage, &want);
        let mut c = bytes.clone();
        let pos = r.below(3, t, c.len() as u64) as usize;
        c[pos] ^= 1 << r.below(4, t, 8);
        let _ = decode_update(&c, &want);
    }
}

#[test]
fn aggregation_is_bit_identical_in_any_arrival_order() {
    let contribs: Vec<Contribution> = (0..8u64)
        .map(|p| Contribution {
            peer: p * 7 % 11,
            weight: 1.0 + p as f64,
            values: randv(3000, 10 + p, 1.0),
            support: None,
        })
        .collect();
    let base = weighted_mean(&contribs, 3000, None).unwrap();
    let sparse_base = sparse_mean(&contribs, 3000, true).unwrap();
    let r = Philox::new(5);
    for trial in 0..20u64 {
        let mut shuffled = contribs.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, r.below(trial, i as u64, i as u64 + 1) as usize);
        }
        let a = weighted_mean(&shuffled, 3000, None).unwrap();
        assert!(a.iter().zip(&base).all(|(x, y)| x.to_bits() == y.to_bits()));
        let s = sparse_mean(&shuffled, 3000, true).unwrap();
        assert!(s.iter().zip(&sparse_base).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    let mut dup = contribs.clone();
    dup[1].peer = dup[0].peer;
    assert_eq!(weighted_mean(&dup, 3000, None), Err(SyncError::Duplicate));
}

#[test]
fn sparse_mean_averages_over_senders_only() {
    let a = Contribution { peer: 1, weight: 1.0, values: vec![2.0, 0.0, 4.0], support: Some(vec![0, 2]) };
    let b = Contribution { peer: 2, weight: 1.0, values: vec![0.0, 0.0, 2.0], support: Some(vec![2]) };
    assert_eq!(sparse_mean(&[a, b], 3, false).unwrap(), vec![2.0, 0.0, 3.0]);
}

#[test]
fn error_feedback_keeps_what_was_not_sent() {
    // e_new + decode(sent) == β·e_old + Δ. Unsent positions hold it to the bit (nothing is
    // subtracted). Sent positions compute e_new = t − d in f32, so the sum can differ from t
    // by the rounding of that one subtraction: at most half an ulp of t.
    let codec = Codec::sparse(ValueCodec::TwoBit, 4096, 64);
    let mut ef = ErrorFeedback::new(0.95, 8192);
    ef.e = randv(8192, 6, 0.01);
    let old = ef.e.clone();
    let delta = randv(8192, 7, 0.01);
    let payload = ef.compress(&delta, &codec).unwrap();
    let (sent, support) = codec.decode_with_support(&payload, 8192).unwrap();
    let support = support.unwrap();
    for i in 0..8192 {
        let t = 0.95f32 * old[i] + delta[i];
        if support.binary_search(&(i as u32)).is_err() {
            assert_eq!(ef.e[i].to_bits(), t.to_bits(), "unsent position {i}");
        } else {
            let ulp = f32::from_bits(t.abs().to_bits() + 1) - t.abs();
            assert!((ef.e[i] + sent[i] - t).abs() <= ulp, "sent position {i}");
        }
    }
}

#[test]
fn noloco_with_zero_learning_rate_contracts_geometrically() {
    // With no inner training, Δ = 0 and only the consensus term acts.
    let n = 8;
    let spread_after = |consensus: bool, rounds: u64| -> Vec<f64> {
        let mut peers: Vec<NoLoCoPeer> =
            (0..n).map(|i| NoLoCoPeer::new(randv(500, 20 + i as u64, 1.0))).collect();
        let zero = vec![0.0f32; 500];
        let mut out = Vec::new();
        for r in 0..rounds {
            let phis: Vec<Vec<f32>> = peers.iter().map(|p| p.phi.clone()).collect();
            for g in noloco_groups(1, r, n) {
                let refs: Vec<&[f32]> = g.iter().map(|&i| phis[i].as_slice()).collect();
                let phi_mean = mean_of(&refs);
                for &i in &g {
                    // Without the consensus term, φ̄ − φᵢ is replaced by 0.
                    let pull = if consensus { phi_mean.clone() } else { peers[i].phi.clone() };
                    peers[i].outer_step(0.7, 0.5, &zero, &pull);
                }
            }
            let refs: Vec<&[f32]> = peers.iter().map(|p| p.phi.as_slice()).collect();
            out.push(replica_spread(&refs));
        }
        out
    };
    let with = spread_after(true, 12);
    let first = with[0];
    assert!(with[11] < first * 0.1, "spread {:?}", with);
    let rate = (with[11] / first).powf(1.0 / 11.0);
    assert!(rate < 0.85, "mean contraction per round {rate}");
    // Geometric: the ratio over each stretch of 3 rounds stays below a fixed factor < 1.
    for w in with.windows(4).step_by(3) {
        assert!(w[3] < w[0] * 0.8, "{w:?}");
    }
    let without = spread_after(false, 12);
    let (lo, hi) = (without[0] * 0.999, without[0] * 1.001);
    assert!(without.iter().all(|&s| s >= lo && s <= hi), "without consensus the spread stays: {without:?}");
}

#[test]
fn dct_round_trips_and_nesterov_with_zero_momentum_is_sgd() {
    let x = randv(5000, 8, 1.0);
    let back = idct_tiles(&dct_tiles(&x), x.len());
    assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-4));
    let mut theta = vec![1.0f32, 2.0, 3.0];
    let mut o = NesterovOuter::new(1.0, 0.0, 3);
    o.step(&mut theta, &[0.5, 0.25, -1.0]);
    assert_eq!(theta, vec![0.5, 1.75, 4.0]);
    let g = noloco_groups(3, 4, 7);
    assert_eq!(g.iter().map(Vec::len).sum::<usize>(), 7);
    assert!(g.iter().all(|grp| grp.len() == 2 || grp.len() == 3));
    assert_eq!(g, noloco_groups(3, 4, 7));
}

/// Writes valid updates for every codec as the fuzz seed corpus (run by hand; see
/// fuzz/README.md). The fuzz target expects n = first byte × 97 = 'T' × 97 = 8148 values.
#[test]
#[ignore = "writes fuzz/corpus/update_decode; run by hand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/update_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let x = randv(usize::from(b'T') * 97, 30, 0.1);
    let codecs = [
        Codec::dense(ValueCodec::F32, 4096),
        Codec::dense(ValueCodec::Int8, 4096),
        Codec::dense(ValueCodec::TwoBit, 4096),
        Codec::dense(ValueCodec::Sign, 4096),
        Codec::sparse(ValueCodec::TwoBit, 4096, 64),
        Codec::sparse(ValueCodec::F32, 4096, 32),
    ];
    for (i, c) in codecs.iter().enumerate() {
        std::fs::write(dir.join(format!("update-{i}")), encode_update(Algorithm::DiLoCo, *c, [7; 32], 1, &x))
            .unwrap();
    }
}

#[test]
fn clipping_to_the_median_norm_scales_only_the_outliers() {
    use tessera_sync::{clip_to_median, l2_norm, Contribution};
    let c = |peer: u64, s: f32| Contribution { peer, weight: 1.0, values: vec![s, 0.0, -s], support: None };
    let honest = vec![c(0, 1.0), c(1, 1.1), c(2, 0.9)];
    assert_eq!(
        clip_to_median(&honest, 3.0),
        Ok((None, 0)),
        "nothing over the bound: the bits stay as they are"
    );
    let mut with_poison = honest.clone();
    with_poison.push(c(3, 100.0));
    let (scales, n) = clip_to_median(&with_poison, 3.0).unwrap();
    let scales = scales.unwrap();
    assert_eq!(n, 1);
    assert_eq!(&scales[..3], &[1.0; 3], "the honest updates are untouched");
    let median = 0.5 * (l2_norm(&honest[0].values) + l2_norm(&honest[1].values));
    let clipped: Vec<f32> = with_poison[3].values.iter().map(|x| x * scales[3]).collect();
    assert!((l2_norm(&clipped) - 3.0 * median).abs() < 1e-4, "scaled down to 3x the median");
    // The mean of the clipped contributions is the mean of the scaled values, bit for bit.
    let scaled: Vec<Contribution> = with_poison
        .iter()
        .zip(&scales)
        .map(|(c, k)| Contribution { values: c.values.iter().map(|x| x * k).collect(), ..c.clone() })
        .collect();
    let want = tessera_sync::weighted_mean(&scaled, 3, None).unwrap();
    assert_eq!(tessera_sync::weighted_mean(&with_poison, 3, Some(&scales)).unwrap(), want);
}

/// The coordinator holds accepted updates as blobs and decodes each again while it is added in
/// (`Encoded`); the simulator and the audit hold them decoded (`Contribution`). Both must give
/// the same bits: the clip's scales, the weighted mean and the sparse mean, whatever order
/// the contributions come in and whether the norm was kept from the first decoding.
#[test]
fn encoded_contributions_aggregate_to_the_bits_of_decoded_ones() {
    use tessera_sync::{
        clip_to_median, l2_norm, sparse_mean, weighted_mean, Contribution, Encoded, Expected,
    };
    let n = 5000;
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    for codec in [Codec::dense(ValueCodec::Int8, 4096), Codec::sparse(ValueCodec::TwoBit, 4096, 64)] {
        let want = Expected {
            layout_hash: [7; 32],
            n,
            algorithm: Algorithm::DiLoCo,
            codec: Some(codec),
            max_norm: None,
        };
        let blobs: Vec<Vec<u8>> = (0..5u64)
            .map(|p| {
                // Peer 4 is an outlier, far over three times the median norm: it is clipped.
                let scale = if p == 4 { 50.0 } else { 1.0 + p as f32 * 0.1 };
                let v: Vec<f32> =
                    (0..n as u64).map(|i| ((i * 7919 + p * 104_729) % 1000) as f32 / 500.0 - 1.0).collect();
                let v: Vec<f32> = v.iter().map(|x| x * scale).collect();
                encode_update(Algorithm::DiLoCo, codec, [7; 32], 1, &v)
            })
            .collect();
        // Peer ids run against the order given, so the order of aggregation is tested too.
        let decoded: Vec<Contribution> = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let d = decode_update(b, &want).unwrap();
                Contribution { peer: 10 - i as u64, weight: 1.0, values: d.values, support: d.support }
            })
            .collect();
        for keep_norm in [false, true] {
            let encoded: Vec<Encoded> = blobs
                .iter()
                .zip(&decoded)
                .map(|(b, d)| Encoded {
                    peer: d.peer,
                    weight: 1.0,
                    blob: b,
                    expected: &want,
                    norm: keep_norm.then(|| l2_norm(&d.values)),
                    support: d.support.as_deref(),
                })
                .collect();
            let (scales, clipped) = clip_to_median(&decoded, 3.0).unwrap();
            assert_eq!(clipped, 1, "the outlier is clipped");
            assert_eq!(clip_to_median(&encoded, 3.0).unwrap(), (scales.clone(), clipped));
            let mean = weighted_mean(&decoded, n, scales.as_deref()).unwrap();
            assert_eq!(bits(weighted_mean(&encoded, n, scales.as_deref()).unwrap()), bits(mean.clone()));
            assert_ne!(
                bits(weighted_mean(&decoded, n, None).unwrap()),
                bits(mean),
                "the clip changes the mean"
            );
            let sparse = sparse_mean(&decoded, n, true).unwrap();
            assert_eq!(bits(sparse_mean(&encoded, n, true).unwrap()), bits(sparse));
        }
    }
}
