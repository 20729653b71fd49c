//! `tessera audit DIR`: a coordinator directory checked from genesis, trusting nothing in it.
//! - The ledger is replayed against the coordinator's key: every signature, chain link and
//!   payout rule, and so every balance.
//! - The stored config must be the one the ledger's `RunCreated` names, and the run's initial
//!   state is derived from it afresh (never read from the store).
//! - Every `RoundClosed` must chain from the state the round before ended in, name the
//!   round's accepted updates as the store recorded them, and, for the hub and all-gather
//!   algorithms, end in the state recomputed here: each accepted update blob read back,
//!   re-hashed, decoded and combined in peer order through the very function the coordinator
//!   closes rounds with ([`tessera_coord::RunSpec::step`]).
//! - NoLoCo has no shared state but one replica per member: the audit keeps every replica
//!   from genesis, as the coordinator does (a member's first replica is the consensus it
//!   joined at), and closes each round through the same [`tessera_coord::Replicas::close`]
//!   over the round's announced members and accepted Δ blobs. The pairing, the φ blobs, every
//!   replica's hash and the consensus must be the ones the round's `Accept` and
//!   `RoundClosed` name.
//! - A round whose update blobs are gone is chained but not recomputed; recomputation
//!   resumes from the next stored state blob (NoLoCo: once the replicas the next `Accept`
//!   names are all stored). The report counts both.
//!
//! - Every dispute decided by one operator is decided again: its evidence's inputs blob is
//!   read back, checked against the kernel and input hashes both sides named, the operator
//!   is recomputed, and the side whose claimed outputs differ must be the recorded loser.
//!
//! The first divergence is named, with the ledger record it is in.
//!
//! A node's kept copy of the ledger (`--ledger-copy FILE`) is audited as far as a copy
//! allows: every signature, link, payout and balance, and the chain of round states. With
//! the blobs the node kept beside it (`--keep-updates`: the config and every accepted
//! update), its hub and all-gather rounds are recomputed too, from genesis, as above.

use std::path::Path;

use tessera_coord::{ClosedRound, GlobalState, Message, Replicas, RunConfig, RunSpec};
use tessera_ledger::{AcceptedUpdate, Entry};
use tessera_sync::Exchange;

use crate::{Store, StoreError};

/// What an audit that passed checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub records: u64,
    pub rounds: u64,
    /// Rounds whose end state was recomputed from their accepted updates.
    pub recomputed: u64,
    /// Update blobs read back, re-hashed and combined.
    pub updates_checked: u64,
    /// Stored state blobs read back and re-hashed.
    pub blobs_checked: u64,
    /// Disputed operators recomputed.
    pub disputes_rerun: u64,
    /// A node's kept copy: the coordinator it is a copy of.
    pub copy_of: Option<[u8; 32]>,
    pub final_state: Option<[u8; 32]>,
}

/// The first divergence an audit found.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no ledger in this directory")]
    NoLedger,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the run's config: {0}")]
    Config(String),
    #[error("record {seq} (RoundClosed of round {round}): {why}")]
    Round { seq: u64, round: u64, why: String },
    #[error("record {seq} (DisputeResolved of round {round}): {why}")]
    Dispute { seq: u64, round: u64, why: String },
}

/// Audits the coordinator directory, or the node's kept ledger copy, at `dir` (read only).
pub fn audit(dir: &Path) -> Result<AuditReport, AuditError> {
    if crate::ledger_file::is_copy(dir) {
        return audit_copy(dir);
    }
    let store = Store::open_read_only(dir)?;
    let ledger = store.verified_ledger()?.ok_or(AuditError::NoLedger)?;
    let log = store.ledger()?;
    let spec = run_spec(&store, &log)?;
    let initial = spec.initial_state();
    match store.meta("initial_state")? {
        Some(h) if h == initial.hash() => {}
        _ => return Err(AuditError::Config("the recorded initial state is not the config's".into())),
    }
    let replicas = (spec.outer.exchange() == Exchange::Pairs).then(Replicas::default);
    let mut replay =
        Replay { store: &store, spec: &spec, hash: initial.hash(), state: Some(initial), replicas };
    let mut report = AuditReport {
        records: ledger.head().0,
        rounds: 0,
        recomputed: 0,
        updates_checked: 0,
        blobs_checked: 0,
        disputes_rerun: 0,
        copy_of: None,
        final_state: None,
    };
    for r in &log {
        match &r.entry {
            Entry::RoundClosed { round, start, end, accepted, .. } => {
                let fail = |why: String| AuditError::Round { seq: r.seq, round: *round, why };
                replay.round(*round, (start, end), accepted, &mut report).map_err(fail)?;
                report.rounds += 1;
            }
            Entry::DisputeResolved { round, loser, evidence: Some(e), .. } => {
                let fail = |why: String| AuditError::Dispute { seq: r.seq, round: *round, why };
                rerun(store.blob(&e.inputs).map_err(|e| e.to_string()), e, *loser).map_err(fail)?;
                report.disputes_rerun += 1;
            }
            _ => {}
        }
    }
    assert_eq!(report.rounds, ledger.accounts().rounds, "one RoundClosed per paid round");
    assert!(report.recomputed <= report.rounds, "a round is recomputed at most once");
    report.final_state = (report.rounds > 0).then_some(replay.hash);
    Ok(report)
}

/// A node's copy: verified whole; each round must start where the one before ended. With
/// the blobs kept beside it (`--keep-updates`), the config the ledger's `RunCreated` names
/// gives the initial state, each hub or all-gather round is recomputed from its kept
/// updates (NoLoCo: closed through every replica from the kept members and Δ blobs), as far
/// as they are all kept (from the first round missing one, chained only), and each dispute
/// whose operator's inputs are kept is decided again.
fn audit_copy(path: &Path) -> Result<AuditReport, AuditError> {
    let (ledger, records) = crate::ledger_file::verified_copy(path)?;
    let dir = crate::ledger_file::blobs_dir(path);
    let spec = copy_spec(&dir, &records)?;
    let pairs = spec.as_ref().is_some_and(|s| s.outer.exchange() == Exchange::Pairs);
    // The shared state (NoLoCo: the consensus, and every replica beside it).
    let mut state = spec.as_ref().map(|s| s.initial_state());
    let mut replicas = pairs.then(Replicas::default);
    let mut last = state.as_ref().map(|s| s.hash());
    let coordinator = crate::ledger_file::read_copy(path)?.0;
    let mut report = AuditReport {
        records: ledger.head().0,
        rounds: 0,
        recomputed: 0,
        updates_checked: 0,
        blobs_checked: 0,
        disputes_rerun: 0,
        copy_of: Some(coordinator),
        final_state: None,
    };
    for r in &records {
        if let Entry::DisputeResolved { round, loser, evidence: Some(e), .. } = &r.entry {
            let fail = |why: String| AuditError::Dispute { seq: r.seq, round: *round, why };
            let got = match crate::ledger_file::kept_blob(&dir, &e.inputs) {
                Ok(None) => continue, // not kept: the dispute stands as the ledger says
                Ok(Some(b)) => Ok(b),
                Err(err) => Err(err.to_string()),
            };
            rerun(got, e, *loser).map_err(fail)?;
            report.disputes_rerun += 1;
            continue;
        }
        let Entry::RoundClosed { round, start, end, accepted, .. } = &r.entry else { continue };
        let fail = |why: String| AuditError::Round { seq: r.seq, round: *round, why };
        if last.is_some_and(|l| l != *start) {
            return Err(fail("it does not start from the state the round before ended in".into()));
        }
        if let (Some(spec), Some(s)) = (&spec, state.take()) {
            let blobs = kept_updates(&dir, accepted).map_err(fail)?;
            let next = match (&blobs, pairs) {
                (Some(b), false) => Some(replay_blobs(spec, s, *round, accepted, b).map_err(fail)?),
                (Some(b), true) => {
                    close_kept_round(spec, &dir, &mut replicas, s, (*round, accepted), b).map_err(fail)?
                }
                (None, _) => None,
            };
            match next {
                Some(s) if s.hash() != *end => return Err(fail(combine_mismatch(&s.hash(), end))),
                Some(s) => {
                    report.updates_checked += blobs.map_or(0, |b| b.len() as u64);
                    report.recomputed += 1;
                    state = Some(s);
                }
                None => replicas = None, // not kept whole: chained only from here
            }
        }
        (report.rounds, last) = (report.rounds + 1, Some(*end));
    }
    assert!(report.recomputed <= report.rounds, "a round is recomputed at most once");
    report.final_state = last.filter(|_| report.rounds > 0);
    Ok(report)
}

/// The run's spec from the config kept beside a copy, which must be the one its
/// `RunCreated` names (`None` when no config is kept: the copy is only chained).
fn copy_spec(dir: &Path, records: &[tessera_ledger::Record]) -> Result<Option<RunSpec>, AuditError> {
    let named = records.iter().find_map(|r| match &r.entry {
        Entry::RunCreated { config, .. } => Some(*config),
        _ => None,
    });
    let Some(named) = named else { return Ok(None) };
    let Some(text) = crate::ledger_file::kept_blob(dir, &named)? else { return Ok(None) };
    let text =
        String::from_utf8(text).map_err(|_| AuditError::Config("the kept config is not UTF-8".into()))?;
    let cfg = RunConfig::from_toml(&text).map_err(|e| AuditError::Config(e.to_string()))?;
    RunSpec::new(cfg).map(Some).map_err(|e| AuditError::Config(e.to_string()))
}

/// The accepted updates' kept blobs, each re-hashed; `None` if one is not kept.
fn kept_updates(dir: &Path, accepted: &[AcceptedUpdate]) -> Result<Option<Vec<Vec<u8>>>, String> {
    let mut out = Vec::with_capacity(accepted.len());
    for a in accepted {
        match crate::ledger_file::kept_blob(dir, &a.update) {
            Ok(Some(b)) => out.push(b),
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("the update of {}: {e}", hex4(&a.peer))),
        }
    }
    Ok(Some(out))
}

/// A hub or all-gather round recomputed from its accepted updates' blobs, through the very
/// function the coordinator closes rounds with.
fn replay_blobs(
    spec: &RunSpec,
    mut state: GlobalState,
    round: u64,
    accepted: &[AcceptedUpdate],
    blobs: &[Vec<u8>],
) -> Result<GlobalState, String> {
    assert_eq!(accepted.len(), blobs.len(), "one blob per accepted update");
    let views: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    spec.replay(&mut state, round, &views).map_err(|e| match e.update {
        Some(i) => format!("the update of {}: {}", hex4(&accepted[i].peer), e.err),
        None => format!("recomputing the round: {}", e.err),
    })?;
    Ok(state)
}

fn combine_mismatch(got: &[u8; 32], named: &[u8; 32]) -> String {
    format!(
        "its accepted updates combine to state {}, not to the {} it names",
        tessera_tensor::hex(&got[..4]),
        tessera_tensor::hex(&named[..4])
    )
}

/// Recomputes a disputed operator from its evidence; the recorded loser must be the side
/// whose claimed outputs differ from the result.
fn rerun(
    blob: Result<Vec<u8>, String>,
    e: &tessera_ledger::Evidence,
    loser: tessera_ledger::Loser,
) -> Result<(), String> {
    let blob = blob.map_err(|e| format!("the operator's inputs: {e}"))?;
    let op = tessera_coord::OpInputs::decode(&blob).map_err(|e| e.to_string())?;
    let named =
        tessera_coord::EntryHashes { kernel: e.kernel, inputs: e.input_hashes.clone(), outputs: Vec::new() };
    let outputs = op.replay(&named).map_err(|e| format!("recomputing the operator: {e}"))?;
    match e.loser(&outputs) {
        l if l == loser => Ok(()),
        l => Err(format!("recomputed, the operator says {l:?} lost, not {loser:?}")),
    }
}

/// The run's spec, from the stored config, which must be the one the ledger was created for.
fn run_spec(store: &Store, log: &[tessera_ledger::Record]) -> Result<RunSpec, AuditError> {
    let text = store.meta("config")?.ok_or_else(|| AuditError::Config("no config stored".into()))?;
    let named = log.iter().find_map(|r| match &r.entry {
        Entry::RunCreated { config, .. } => Some(*config),
        _ => None,
    });
    if named != Some(*blake3::hash(&text).as_bytes()) {
        return Err(AuditError::Config(
            "the stored config is not the one the ledger's RunCreated names".into(),
        ));
    }
    let text = String::from_utf8(text).map_err(|_| AuditError::Config("not UTF-8".into()))?;
    let cfg = RunConfig::from_toml(&text).map_err(|e| AuditError::Config(e.to_string()))?;
    RunSpec::new(cfg).map_err(|e| AuditError::Config(e.to_string()))
}

/// The state the replay has reached: its hash, and the state itself while it is known.
struct Replay<'a> {
    store: &'a Store,
    spec: &'a RunSpec,
    hash: [u8; 32],
    state: Option<GlobalState>,
    /// NoLoCo: every member's replica, while they are all known.
    replicas: Option<Replicas>,
}

impl Replay<'_> {
    /// Checks one closed round and moves on to its end state.
    fn round(
        &mut self,
        round: u64,
        (start, end): (&[u8; 32], &[u8; 32]),
        accepted: &[AcceptedUpdate],
        report: &mut AuditReport,
    ) -> Result<(), String> {
        if *start != self.hash {
            return Err("it does not start from the state the round before ended in".into());
        }
        let closed = self.store.closed_state(round).map_err(|e| e.to_string())?;
        if closed != Some(*end) {
            return Err("its end state is not the one the store recorded for the round".into());
        }
        let peers: Vec<[u8; 32]> = accepted.iter().map(|a| a.peer).collect();
        if self.store.accepted_in(round).map_err(|e| e.to_string())? != peers {
            return Err("its accepted updates are not the ones the store recorded".into());
        }
        let recomputed = self.recompute(round, accepted, report)?;
        if let Some(s) = &recomputed {
            if s.hash() != *end {
                return Err(combine_mismatch(&s.hash(), end));
            }
            report.recomputed += 1;
        }
        self.state = match (recomputed, self.store.has_blob(end)) {
            (s, true) => {
                let stored =
                    self.store.state(self.spec, end).map_err(|e| format!("its end state's blob: {e}"))?;
                report.blobs_checked += 1;
                s.or(Some(stored))
            }
            (s, false) => s,
        };
        self.hash = *end;
        if self.spec.outer.exchange() == Exchange::Pairs && self.replicas.is_none() && self.state.is_some() {
            self.replicas = self.stored_replicas(round);
        }
        Ok(())
    }

    /// The round's end state recomputed from its update blobs, or `None` when it cannot be
    /// (no start state known, a NoLoCo round, or an update blob no longer stored).
    fn recompute(
        &mut self,
        round: u64,
        accepted: &[AcceptedUpdate],
        report: &mut AuditReport,
    ) -> Result<Option<GlobalState>, String> {
        let Some(state) = self.state.take() else {
            self.replicas = None;
            return Ok(None);
        };
        let stored = accepted.iter().all(|a| self.store.has_blob(&a.update));
        if !stored {
            self.replicas = None;
            return Ok(None);
        }
        let blobs = self.update_blobs(accepted)?;
        report.updates_checked += blobs.len() as u64;
        if self.spec.outer.exchange() == Exchange::Pairs {
            return match self.replicas.is_some() {
                true => self.close_pairs(round, state, accepted, &blobs).map(Some),
                false => Ok(None),
            };
        }
        replay_blobs(self.spec, state, round, accepted, &blobs).map(Some)
    }

    /// NoLoCo: the replicas after `round`, read back from the store, when every one the
    /// round's `Accept` names is still kept (the replay resumes from them).
    fn stored_replicas(&self, round: u64) -> Option<Replicas> {
        let (_, accept) = self.store.round_messages(round).ok()??;
        let states =
            self.spec.restore_replicas(round + 1, accept.as_ref(), |h| self.store.state(self.spec, h));
        states.ok().map(Replicas::restore)
    }

    fn update_blobs(&self, accepted: &[AcceptedUpdate]) -> Result<Vec<Vec<u8>>, String> {
        let who = |a: &AcceptedUpdate| tessera_tensor::hex(&a.peer[..4]);
        accepted
            .iter()
            .map(|a| self.store.blob(&a.update).map_err(|e| format!("the update of {}: {e}", who(a))))
            .collect()
    }

    /// NoLoCo: closes the round through the replicas, from the consensus `prev`, and checks
    /// the pairing and every replica against the round's `Accept`. The consensus comes back.
    fn close_pairs(
        &mut self,
        round: u64,
        prev: GlobalState,
        accepted: &[AcceptedUpdate],
        blobs: &[Vec<u8>],
    ) -> Result<GlobalState, String> {
        let (start, accept) = match self.store.round_messages(round).map_err(|e| e.to_string())? {
            Some((start, Some(accept))) => (start, accept),
            _ => return Err("the store holds no Accept for the round".into()),
        };
        let Message::RoundStart { members, .. } = start else {
            return Err("the store's round start is not a RoundStart".into());
        };
        let named = ClosedRound::of(&accept).ok_or("the store's Accept is not an Accept")?;
        let Some(mut replicas) = self.replicas.take() else {
            return Err("the replicas are not known here".into());
        };
        let kept: Vec<[u8; 32]> = named.replicas.iter().map(|r| r.0).collect();
        let closed = close_through(self.spec, &mut replicas, &prev, (&members, &kept), accepted, blobs)?;
        let Message::Accept { pairs: Some(announced), .. } = &accept else {
            return Err("the Accept of a NoLoCo round names no pairs".into());
        };
        if closed.pairs.groups != announced.groups || closed.pairs.phis != announced.phis {
            return Err("its pairing or φ blobs are not the ones the seed and the replicas give".into());
        }
        if let Some((p, _)) = closed.pairs.replicas.iter().zip(&announced.replicas).find(|(a, b)| a != b) {
            return Err(format!("the replica of {} is not the one its group's updates give", hex4(&p.0)));
        }
        if closed.pairs.replicas.len() != announced.replicas.len() {
            return Err("it names other replicas than the members kept".into());
        }
        assert!(replicas.states().count() == kept.len(), "the table is the kept replicas");
        self.replicas = Some(replicas);
        Ok(closed.consensus)
    }
}

/// A NoLoCo round closed through the replicas from the consensus `prev`: `members` trained
/// (a member without a replica, new in this round or back after leaving, started from the
/// consensus; so did one that joined during the round and is `kept`), the accepted Δ blobs
/// step their groups, and the `kept` members' replicas stay.
fn close_through(
    spec: &RunSpec,
    replicas: &mut Replicas,
    prev: &GlobalState,
    (members, kept): (&[[u8; 32]], &[[u8; 32]]),
    accepted: &[AcceptedUpdate],
    blobs: &[Vec<u8>],
) -> Result<tessera_coord::ClosedPairs, String> {
    for p in members.iter().chain(kept) {
        if replicas.get(p).is_none() {
            replicas.ensure(*p, prev);
        }
    }
    let mut deltas = std::collections::BTreeMap::new();
    for (i, (a, b)) in accepted.iter().zip(blobs).enumerate() {
        let c = spec.contribution(i, b).map_err(|e| format!("the update of {}: {e}", hex4(&a.peer)))?;
        deltas.insert(a.peer, c.values);
    }
    let kept: std::collections::BTreeSet<[u8; 32]> = kept.iter().copied().collect();
    replicas
        .close(spec, prev, members, &deltas, |p| kept.contains(p))
        .map_err(|e| format!("recomputing the replicas: {e}"))
}

/// A NoLoCo round of a node's copy, closed through the replicas from what the node kept
/// (the round's members and kept replicas, and its Δ blobs); `None`, and the replicas
/// forgotten, when the round was not kept.
fn close_kept_round(
    spec: &RunSpec,
    dir: &Path,
    replicas: &mut Option<Replicas>,
    prev: GlobalState,
    (round, accepted): (u64, &[AcceptedUpdate]),
    blobs: &[Vec<u8>],
) -> Result<Option<GlobalState>, String> {
    let Some(mut table) = replicas.take() else { return Ok(None) };
    let Some(k) = crate::ledger_file::kept_round(dir, round).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let closed = close_through(spec, &mut table, &prev, (&k.members, &k.replicas), accepted, blobs)?;
    assert_eq!(table.states().count(), k.replicas.len(), "the table is the kept replicas");
    *replicas = Some(table);
    Ok(Some(closed.consensus))
}

fn hex4(p: &[u8; 32]) -> String {
    tessera_tensor::hex(&p[..4])
}
