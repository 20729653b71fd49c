//! Ingestion, manifests, verification and reproducible batches.

use std::path::PathBuf;

use tessera_data::{
    ingest, ingest_bytes, BatchKey, DataError, Dataset, IngestOptions, Manifest, SourceFormat,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_opts() -> IngestOptions {
    IngestOptions { shard_tokens: 1000, val_every: 4, ..IngestOptions::default() }
}

fn text(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"the quick brown fox jumps over the lazy dog\n"[i % 44]).collect()
}

#[test]
fn ingest_splits_and_names_shards_by_hash() {
    let out = tmp("split");
    let m = ingest_bytes(&text(9500), "mem", &out, &small_opts()).unwrap();
    assert_eq!(m.train.len() + m.val.len(), 10);
    assert_eq!(m.val.len(), 2, "shards 4 and 8 are held out");
    assert_eq!(m.train_tokens() + m.val_tokens(), 9500);
    for s in m.train.iter().chain(&m.val) {
        let bytes = std::fs::read(out.join(&s.file)).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), s.blake3);
    }
    assert_eq!(Manifest::read(&out).unwrap(), m);
}

#[test]
fn batches_are_a_pure_function_of_the_key() {
    let out = tmp("batches");
    ingest_bytes(&text(20_000), "mem", &out, &small_opts()).unwrap();
    let a = Dataset::open(&out).unwrap();
    let b = Dataset::open(&out).unwrap();
    let k = BatchKey { seed: 1, round: 2, slot: 3, step: 4 };
    assert_eq!(a.train_batch(&k, 4, 32).unwrap(), b.train_batch(&k, 4, 32).unwrap());
    let other = BatchKey { slot: 4, ..k };
    assert_ne!(a.train_batch(&k, 4, 32).unwrap(), a.train_batch(&other, 4, 32).unwrap());
    let batch = a.train_batch(&k, 2, 16).unwrap();
    // Targets are the inputs shifted by one.
    assert_eq!(&batch.inputs.data()[1..16], &batch.targets.data()[..15]);
    assert_eq!(a.val_batch(0, 2, 16).unwrap(), b.val_batch(0, 2, 16).unwrap());
}

#[test]
fn validation_tokens_never_appear_in_training_batches() {
    // Train shards hold only 'a'..'y'; the held-out shard is all 'z'.
    let out = tmp("heldout");
    let mut t = Vec::new();
    for shard in 0..4 {
        let c = if shard == 3 { b'z' } else { b'a' + shard as u8 };
        t.extend(std::iter::repeat_n(c, 1000));
    }
    let m = ingest_bytes(&t, "mem", &out, &small_opts()).unwrap();
    assert_eq!(m.val.len(), 1);
    let d = Dataset::open(&out).unwrap();
    for step in 0..50 {
        let b = d.train_batch(&BatchKey { seed: 9, round: 0, slot: 0, step }, 8, 20).unwrap();
        assert!(b.inputs.data().iter().all(|&v| v != f32::from(b'z')));
    }
    assert!(d.val_batch(0, 2, 20).unwrap().inputs.data().iter().all(|&v| v == f32::from(b'z')));
}

#[test]
fn altered_or_missing_shard_is_refused() {
    let out = tmp("tamper");
    let m = ingest_bytes(&text(5000), "mem", &out, &small_opts()).unwrap();
    let victim = out.join(&m.train[1].file);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    assert!(matches!(Dataset::open(&out), Err(DataError::ShardHash { .. })));
    bytes.pop();
    std::fs::write(&victim, &bytes).unwrap();
    assert!(matches!(Dataset::open(&out), Err(DataError::ShardLength { .. })));
    std::fs::remove_file(&victim).unwrap();
    assert!(matches!(Dataset::open(&out), Err(DataError::Missing { .. })));
}

#[test]
fn bad_corpora_are_typed_errors() {
    let out = tmp("bad");
    let missing = out.join("nope.txt");
    assert!(matches!(ingest(&missing, &out.join("o1"), &small_opts()), Err(DataError::Missing { .. })));
    let latin1 = out.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    match ingest(&latin1, &out.join("o2"), &small_opts()) {
        Err(DataError::NotUtf8 { offset, .. }) => assert_eq!(offset, 3),
        other => panic!("{other:?}"),
    }
    let empty = out.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(ingest(&empty, &out.join("o3"), &small_opts()), Err(DataError::Empty(_))));
    let tiny = out.join("tiny.txt");
    std::fs::write(&tiny, b"hello").unwrap();
    assert!(matches!(ingest(&tiny, &out.join("o4"), &small_opts()), Err(DataError::TooSmall { .. })));
    let odd = out.join("odd.bin");
    std::fs::write(&odd, [1u8, 0, 2]).unwrap();
    let u16opts = IngestOptions { format: SourceFormat::U16, vocab: 1000, ..small_opts() };
    assert!(matches!(ingest(&odd, &out.join("o5"), &u16opts), Err(DataError::OddTokenFile { .. })));
    std::fs::write(&odd, 5000u16.to_le_bytes()).unwrap();
    assert!(matches!(ingest(&odd, &out.join("o6"), &u16opts), Err(DataError::TokenOutOfRange { .. })));
    // A manifest with an unknown key is refused.
    let good = out.join("good");
    ingest_bytes(&text(5000), "mem", &good, &small_opts()).unwrap();
    let mpath = good.join("manifest.json");
    let s = std::fs::read_to_string(&mpath).unwrap().replacen('{', "{\"extra\": 1,", 1);
    std::fs::write(&mpath, s).unwrap();
    assert!(matches!(Dataset::open(&good), Err(DataError::BadManifest { .. })));
}

#[test]
fn directory_ingest_is_ordered_and_pretokenized_input_works() {
    let src = tmp("dir-src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("b.txt"), text(1500)).unwrap();
    std::fs::write(src.join("sub/a.txt"), text(1500)).unwrap();
    std::fs::write(src.join("a.txt"), text(1500)).unwrap();
    let m1 = ingest(&src, &tmp("dir-out1"), &small_opts()).unwrap();
    let m2 = ingest(&src, &tmp("dir-out2"), &small_opts()).unwrap();
    assert_eq!(m1.train, m2.train);
    let tok = tmp("u16");
    let ids: Vec<u8> = (0..4000u16).flat_map(|i| (i % 700).to_le_bytes()).collect();
    std::fs::write(tok.join("ids.bin"), ids).unwrap();
    let opts = IngestOptions { format: SourceFormat::U16, vocab: 700, ..small_opts() };
    let m = ingest(&tok.join("ids.bin"), &tok.join("out"), &opts).unwrap();
    assert_eq!(m.vocab, 700);
    assert_eq!(m.tokenizer, "pretokenized-u16");
    Dataset::open(&tok.join("out")).unwrap();
}
