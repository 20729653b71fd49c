//! `tessera ledger DIR`: a run's accounts, read from the coordinator's store after its ledger
//! is verified (signatures, chain links and the payout rules), printed one peer a line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tessera_ledger::{Account, Accounts};
use tessera_node::Store;

#[derive(clap::Args)]
pub struct LedgerArgs {
    /// The coordinator's directory (its `--dir`), or a node's kept ledger copy (its
    /// `--ledger-copy FILE`; kept with `--keep-updates`, the audit recomputes its rounds from
    /// the blobs in `FILE.blobs/`).
    pub dir: PathBuf,
}

pub fn run(a: LedgerArgs) -> Result<()> {
    let ledger = match tessera_node::ledger_file::is_copy(&a.dir) {
        true => Some(tessera_node::ledger_file::verified_copy(&a.dir).context("checking the ledger copy")?.0),
        false => {
            let store =
                Store::open_read_only(&a.dir).with_context(|| format!("opening {}", a.dir.display()))?;
            store.verified_ledger().context("checking the ledger")?
        }
    };
    let Some(l) = ledger else {
        println!("no ledger in {} (a run from before ledgers, or not started)", a.dir.display());
        return Ok(());
    };
    let (n, head) = l.head();
    println!(
        "ledger: {n} records, head {}, signatures, chain and payouts verified",
        tessera_net::hex(&head[..4])
    );
    for line in table(l.accounts()) {
        println!("{line}");
    }
    Ok(())
}

/// `tessera audit DIR`.
pub fn audit(a: LedgerArgs) -> Result<()> {
    match tessera_node::audit::audit(&a.dir) {
        Ok(r) if r.copy_of.is_some() => {
            let last = r.final_state.map_or("none".to_string(), |h| tessera_net::hex(&h));
            let of = r.copy_of.map(|c| tessera_net::hex(&c[..4])).unwrap_or_default();
            let rounds = match r.recomputed {
                0 => "rounds are recomputed from the coordinator's directory, or from a copy kept \
                      with --keep-updates"
                    .to_string(),
                n => format!("{n} recomputed from {} kept update blobs", r.updates_checked),
            };
            println!(
                "audit: OK: a node's copy of coordinator {of}'s ledger: {} records, {} rounds chained \
                 ({rounds}), {} disputed operators recomputed, signatures, links and balances \
                 replayed; final state {last}",
                r.records, r.rounds, r.disputes_rerun
            );
            Ok(())
        }
        Ok(r) => {
            let last = r.final_state.map_or("none".to_string(), |h| tessera_net::hex(&h));
            println!(
                "audit: OK: {} records, {} rounds ({} recomputed from {} update blobs), {} state blobs re-hashed, {} disputed operators recomputed; final state {last}",
                r.records, r.rounds, r.recomputed, r.updates_checked, r.blobs_checked, r.disputes_rerun
            );
            Ok(())
        }
        Err(e) => {
            println!("audit: FAILED: {e}");
            anyhow::bail!("the audit of {} failed: {e}", a.dir.display())
        }
    }
}

/// The accounts as lines of a table, a header first, then a line of totals.
pub fn table(accounts: &Accounts) -> Vec<String> {
    let mut out = vec![format!(
        "{:<10} {:<9} {:>7} {:>8} {:>6} {:>8} {:>8} {:>8} {:>10}  {}",
        "peer", "role", "stake", "rewards", "fees", "bounties", "slashed", "accepted", "mean score", "status"
    )];
    for (p, a) in accounts.iter() {
        out.push(line(&tessera_net::hex(&p[..4]), a));
    }
    let sum = |f: fn(&Account) -> u64| accounts.iter().map(|(_, a)| f(a)).sum::<u64>();
    out.push(format!(
        "{} rounds paid; {} rewarded, {} in fees, {} to whistleblowers, {} slashed ({} burned){}",
        accounts.rounds,
        sum(|a| a.rewards),
        sum(|a| a.fees),
        sum(|a| a.bounties),
        sum(|a| a.slashed),
        accounts.burned,
        match accounts.unpaid {
            0 => String::new(),
            n => format!("; {n} left unpaid by consensus"),
        }
    ));
    out
}

fn line(peer: &str, a: &Account) -> String {
    let role = if a.validator { "validator" } else { "trainer" };
    let mean = match a.accepted {
        0 => "-".to_string(),
        n => format!("{:+.4}", a.score_sum as f64 / n as f64 / 1e6),
    };
    let status = if a.active { "active" } else { "removed" };
    format!(
        "{peer:<10} {role:<9} {:>7} {:>8} {:>6} {:>8} {:>8} {:>8} {mean:>10}  {status}",
        a.stake, a.rewards, a.fees, a.bounties, a.slashed, a.accepted
    )
}
