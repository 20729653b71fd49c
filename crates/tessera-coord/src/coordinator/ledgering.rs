//! The coordinator as the ledger's writer (`tessera_ledger`). Once its driver hands it the
//! signing key and the stored log ([`Coordinator::keep_ledger`]), every join locks a stake
//! (one below `min_stake` is refused with [`Reject::Stake`]), every closed round, verdict and
//! dispute is appended, with the payouts the ledger's rules imply, and each append is
//! persisted ([`Record::Ledger`]) before the message that announces it; the `Accept` of a
//! round carries the ledger's head after it. Without a ledger (tests of the protocol alone)
//! nothing is kept and stakes are not checked.

use ed25519_dalek::SigningKey;
use tessera_ledger::{AcceptedUpdate, Entry, Ledger};

use super::*;

/// Most ledger records the coordinator holds in memory to serve `LedgerFetch`es (the store
/// holds them all).
pub const MAX_SERVED_RECORDS: usize = 1 << 20;
/// Most bytes of records one `LedgerRecords` carries (within the frame limit).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// The ledger, the key that signs it, and its records (to serve to the nodes).
pub(super) struct Kept {
    key: SigningKey,
    ledger: Ledger,
    log: Vec<tessera_ledger::Record>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("head", &self.ledger.head()).finish()
    }
}

impl Coordinator {
    /// Keeps the run's ledger from now on, signed with `key` (the coordinator's identity):
    /// `log` is what the store holds, verified and continued; empty, a new ledger begins,
    /// whose first record is among the outputs to persist.
    pub fn keep_ledger(
        &mut self,
        key: SigningKey,
        log: &[tessera_ledger::Record],
    ) -> Result<Vec<Output>, CoordError> {
        let me = key.verifying_key().to_bytes();
        let (ledger, log) = match log.is_empty() {
            true => {
                let config = *blake3::hash(self.cfg.to_toml().as_bytes()).as_bytes();
                let (l, first) = Ledger::genesis(&key, config, self.cfg.stakes).map_err(ledger_err)?;
                self.out.push(Output::Persist(Record::Ledger(vec![first.clone()])));
                (l, vec![first])
            }
            false => (Ledger::resume(&me, log).map_err(ledger_err)?, log.to_vec()),
        };
        assert_eq!(
            ledger.accounts().rules(),
            Some(&self.cfg.stakes),
            "the ledger is of this run's economics"
        );
        self.kept = Some(Kept { key, ledger, log });
        Ok(std::mem::take(&mut self.out))
    }

    /// The accounts the ledger holds (`None`: no ledger kept).
    pub fn accounts(&self) -> Option<&tessera_ledger::Accounts> {
        self.kept.as_ref().map(|k| k.ledger.accounts())
    }

    /// The ledger's head: its record count and last record's hash.
    pub fn ledger_head(&self) -> Option<(u64, Hash32)> {
        self.kept.as_ref().map(|k| k.ledger.head())
    }

    /// A join's stake, checked against the run's minimum (when a ledger is kept).
    pub(super) fn check_stake(&self, stake: u64) -> Result<(), Reject> {
        let need = self.cfg.stakes.min_stake;
        match self.kept.is_some() && stake < need {
            true => Err(Reject::Stake { got: stake, need }),
            false => Ok(()),
        }
    }

    /// A peer joined (or rejoined: an active account is kept as it is).
    pub(super) fn ledger_join(&mut self, peer: PeerId, stake: u64, validator: bool) {
        let active = self.accounts().and_then(|a| a.get(&peer)).is_some_and(|a| a.active);
        if !active {
            self.ledger(Entry::Joined { peer, stake, validator });
        }
    }

    /// The round's `Weights`, when two or more validators scored it: each validator's signed
    /// scores of the updates it accepted, in peer order (a validator refused since, or one
    /// with no score of an accepted update, writes none). With one scorer the round is paid
    /// by its scores as they stand.
    pub(super) fn ledger_weights(
        &mut self,
        round: u64,
        weights: BTreeMap<PeerId, BTreeMap<PeerId, tessera_ledger::SignedScore>>,
        accept: &Message,
    ) {
        let Message::Accept { accepted, .. } = accept else { return };
        let weights: Vec<_> = weights.into_iter().filter(|(v, _)| self.validators.contains_key(v)).collect();
        if weights.len() < 2 {
            return;
        }
        for (validator, mut row) in weights {
            let scores: Vec<_> = accepted.iter().filter_map(|p| row.remove(p)).collect();
            assert!(scores.windows(2).all(|w| w[0].peer < w[1].peer), "accepted peers are in order");
            if !scores.is_empty() {
                self.ledger(Entry::Weights { round, validator, scores });
            }
        }
    }

    /// A round closed from state `start` to `end`, with these accepted updates (in peer
    /// order, each with its trainer's signature from `sigs`) and rejections.
    pub(super) fn ledger_round(
        &mut self,
        round: u64,
        (start, end): (Hash32, Hash32),
        accept: &Message,
        sigs: &BTreeMap<PeerId, Vec<u8>>,
    ) {
        let Message::Accept { accepted, updates, rejected, .. } = accept else { return };
        let score = |p: &PeerId| self.round_scores.get(p).copied().unwrap_or(0);
        let sig = |p: &PeerId| sigs.get(p).cloned().unwrap_or_default();
        let accepted: Vec<AcceptedUpdate> = accepted
            .iter()
            .zip(updates)
            .map(|(p, u)| AcceptedUpdate { peer: *p, update: *u, score: score(p), sig: sig(p) })
            .collect();
        let rejected = rejected.clone();
        self.round_scores.clear();
        self.ledger(Entry::RoundClosed { round, start, end, accepted, rejected });
    }

    /// The ledger records queued for persisting since output `mark`, taken out of the
    /// outputs (to be written with the round's close); the other outputs keep their order.
    pub(super) fn take_ledger_writes(&mut self, mark: usize) -> Vec<tessera_ledger::Record> {
        assert!(mark <= self.out.len(), "a mark within the outputs");
        let tail: Vec<Output> = self.out.drain(mark..).collect();
        let mut records = Vec::new();
        for o in tail {
            match o {
                Output::Persist(Record::Ledger(v)) => records.extend(v),
                other => self.out.push(other),
            }
        }
        assert!(records.windows(2).all(|w| w[0].seq + 1 == w[1].seq), "the records stay in order");
        records
    }

    /// Appends `entry` (and its payouts), to be persisted before what announces it. An entry
    /// the ledger refuses (a peer it has no account of) is reported, never fatal.
    pub(super) fn ledger(&mut self, entry: Entry) {
        let Some(k) = self.kept.as_mut() else { return };
        let kind = entry.kind();
        match k.ledger.append(&k.key, entry) {
            Ok(records) => {
                if k.log.len() + records.len() <= MAX_SERVED_RECORDS {
                    k.log.extend(records.iter().cloned());
                }
                self.out.push(Output::Persist(Record::Ledger(records)));
            }
            Err(e) => self.event(Event::LedgerRefused { kind, why: e.to_string() }),
        }
    }
}

impl Coordinator {
    /// A node asks for the ledger from record `from` on: as many as fit one message.
    pub(super) fn on_ledger_fetch(&mut self, to: PeerId, from: u64) {
        let Some(k) = self.kept.as_ref() else { return };
        let mut records = Vec::new();
        let mut bytes = 0;
        for r in k.log.iter().skip(usize::try_from(from).unwrap_or(usize::MAX)) {
            let b = r.encode();
            if records.len() >= tessera_wire::MAX_LEDGER_BATCH || bytes + b.len() > MAX_BATCH_BYTES {
                break;
            }
            bytes += b.len();
            records.push(b);
        }
        assert!(records.len() <= tessera_wire::MAX_LEDGER_BATCH, "one batch");
        self.out.push(Output::Send { to, message: Message::LedgerRecords { from, records } });
    }
}

fn ledger_err(e: tessera_ledger::LedgerError) -> CoordError {
    CoordError::State(format!("ledger: {e}"))
}
