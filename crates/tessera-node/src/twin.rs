//! The copy drill's twin directory (`tessera node --twin-dir DIR`, hidden). An honest node
//! leaves each update it commits there, after the `Commit` is sent, so that its commit
//! reaches the coordinator first; a node told `--cheat copy` waits there for its twin's update
//! of the round and commits it as its own, as a sybil resubmitting another identity's work
//! would. Drills only: nothing of the protocol reads this directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a copier waits for its twin's update of a round before sending its own.
pub const TWIN_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

fn path(dir: &Path, round: u64) -> PathBuf {
    dir.join(format!("update-{round:08}.bin"))
}

/// Leaves `update`, committed for `round`, for the twin (written whole, then renamed).
pub fn leave(dir: &Path, round: u64, update: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".update-{round:08}.tmp"));
    std::fs::write(&tmp, update)?;
    std::fs::rename(tmp, path(dir, round))
}

/// The twin's update of `round` (exactly `len` bytes), waiting up to [`TWIN_WAIT`] for it.
pub fn take(dir: &Path, round: u64, len: u64) -> Option<Vec<u8>> {
    let t0 = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(path(dir, round)) {
            if b.len() as u64 == len {
                return Some(b);
            }
        }
        if t0.elapsed() >= TWIN_WAIT {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_left_update_is_taken_whole_and_a_missing_one_is_not() {
        let dir = std::env::temp_dir().join(format!("tessera-twin-{}", std::process::id()));
        super::leave(&dir, 3, b"abcd").unwrap();
        assert_eq!(super::take(&dir, 3, 4), Some(b"abcd".to_vec()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
