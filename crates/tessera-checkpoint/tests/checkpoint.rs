//! Checkpoints round-trip to the bit, refuse corruption, and survive a full disk.

use std::path::{Path, PathBuf};

use tessera_checkpoint::{latest, load, save, CkptError, ModelShape, SaveOptions};
use tessera_model::fixtures::SONNETS;
use tessera_model::{text_batch, AdamWConfig, Gpt, GptConfig, Trainer};
use tessera_tensor::{hex, TraceMode};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-ckpt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn trained(steps: u64) -> Trainer<Gpt> {
    let cfg = GptConfig::preset("tiny").unwrap();
    let mut tr = Trainer::new(Gpt::new(cfg, 11).unwrap(), AdamWConfig::for_run(50)).unwrap();
    for s in 0..steps {
        tr.step(&text_batch(SONNETS, 11, s, 2, 64).unwrap(), TraceMode::Off).unwrap();
    }
    tr
}

fn shape() -> ModelShape {
    let c = GptConfig::preset("tiny").unwrap();
    ModelShape {
        kind: "gpt".into(),
        preset: "tiny".into(),
        vocab: c.vocab,
        d_model: c.d_model,
        layers: c.layers,
        heads: c.heads,
        context: c.context,
    }
}

fn save_tr(dir: &Path, tr: &Trainer<Gpt>, opts: &SaveOptions) -> Result<PathBuf, CkptError> {
    save(dir, &tr.model.params, &tr.opt, (&shape(), None, "seed = 11\n"), opts)
}

#[test]
fn round_trip_is_exact() {
    let dir = tmp("roundtrip");
    let tr = trained(3);
    let path = save_tr(&dir, &tr, &SaveOptions::default()).unwrap();
    assert!(path.ends_with("step-00000003"));
    let ck = load(&path, &tr.model.params).unwrap();
    assert_eq!(ck.params, tr.model.params);
    assert_eq!(ck.opt, tr.opt);
    assert_eq!(ck.meta.state_hash, hex(&tr.state_hash()));
    assert_eq!(latest(&dir).unwrap(), Some(path.clone()));
    // Saving the same state again is a no-op; a different state for the same step conflicts.
    assert_eq!(save_tr(&dir, &tr, &SaveOptions::default()).unwrap(), path);
    let mut other = trained(3);
    other.opt.m.set(0, tessera_tensor::Tensor::zeros(other.opt.m.tensors()[0].shape()));
    assert!(matches!(save_tr(&dir, &other, &SaveOptions::default()), Err(CkptError::Conflict { .. })));
}

#[test]
fn corrupt_or_truncated_checkpoints_are_refused() {
    let dir = tmp("corrupt");
    let tr = trained(2);
    let path = save_tr(&dir, &tr, &SaveOptions::default()).unwrap();
    let model = path.join("model.safetensors");
    let good = std::fs::read(&model).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x40;
    std::fs::write(&model, &bad).unwrap();
    assert!(matches!(load(&path, &tr.model.params), Err(CkptError::FileHash { .. })));
    std::fs::write(&model, &good[..n / 2]).unwrap();
    assert!(matches!(load(&path, &tr.model.params), Err(CkptError::FileHash { .. })));
    std::fs::write(&model, &good).unwrap();
    load(&path, &tr.model.params).unwrap();
    // A meta.json whose state hash disagrees with the content is refused too.
    let meta = path.join("meta.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    let h = hex(&tr.state_hash());
    std::fs::write(&meta, text.replace(&h, &"0".repeat(64))).unwrap();
    assert!(matches!(load(&path, &tr.model.params), Err(CkptError::StateHash { .. })));
    std::fs::write(&meta, "{ not json").unwrap();
    assert!(matches!(load(&path, &tr.model.params), Err(CkptError::Corrupt { .. })));
    std::fs::remove_file(&meta).unwrap();
    assert!(matches!(load(&path, &tr.model.params), Err(CkptError::NotFound(_))));
    // A checkpoint of another model shape does not load.
    let path2 = save_tr(&tmp("corrupt2"), &tr, &SaveOptions::default()).unwrap();
    let small = Gpt::new(GptConfig::preset("small").unwrap(), 1).unwrap();
    assert!(matches!(load(&path2, &small.params), Err(CkptError::Mismatch { .. })));
}

#[test]
fn full_disk_leaves_earlier_checkpoints_intact() {
    let dir = tmp("full");
    let first = trained(2);
    let p1 = save_tr(&dir, &first, &SaveOptions::default()).unwrap();
    let second = trained(4);
    for limit in [0, 100, 20_000, 200_000] {
        let err = save_tr(&dir, &second, &SaveOptions { fail_after_bytes: Some(limit) }).unwrap_err();
        match err {
            CkptError::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::StorageFull),
            other => panic!("{other:?}"),
        }
        // Only the first checkpoint is there, complete, and no temporary directory is left.
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, vec!["step-00000002".to_string()], "limit {limit}");
        assert_eq!(latest(&dir).unwrap(), Some(p1.clone()));
        load(&p1, &first.model.params).unwrap();
    }
}

/// Pruning keeps the newest checkpoints, and clears what crashed writers left behind: a
/// removal cut short (`.del-*`) and another process's temporary directory; a half-deleted
/// checkpoint is never left under a `step-*` name.
#[test]
fn prune_keeps_the_newest_and_clears_what_crashes_left() {
    let dir = tmp("prune");
    let mut tr = trained(0);
    for step in 1..=5 {
        tr.opt.step = step;
        save_tr(&dir, &tr, &SaveOptions::default()).unwrap();
    }
    std::fs::create_dir_all(dir.join(".tmp-step-00000006-4000000000")).unwrap();
    std::fs::create_dir_all(dir.join(".del-step-00000000")).unwrap();
    assert_eq!(tessera_checkpoint::prune(&dir, 2).unwrap(), 3);
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["step-00000004", "step-00000005"]);
    load(&latest(&dir).unwrap().unwrap(), &tr.model.params).unwrap();
    assert_eq!(tessera_checkpoint::prune(&dir, 2).unwrap(), 0, "nothing more to prune");
}
