//! The validator's state machine as a status page reads it: its phase follows its work.

mod common;

use tessera_coord::*;

const COORD: PeerId = [0xC0; 32];
const ME: PeerId = [5; 32];

#[test]
fn a_validators_phase_is_joining_then_waiting_then_checking_then_done() {
    let ds = common::dataset("validator-phase");
    let cfg = RunConfig { heartbeat_ms: 100, ..RunConfig::default() };
    let vc = ValidatorConfig {
        me: ME,
        coordinator: COORD,
        dataset: ds.manifest_hash(),
        addr: None,
        behaviour: Behaviour::Honest,
        stake: DEFAULT_STAKE,
        key: None,
    };
    let mut v = Validator::new(vc);
    let mut seq = 0;
    let mut frame = |v: &mut Validator, message: Message| {
        seq += 1;
        v.handle(0, Signed { sender: COORD, seq, message })
    };
    v.connected(0);
    assert_eq!(v.phase(), Phase::Joining, "no welcome yet");
    let s0 = RunSpec::new(cfg.clone()).unwrap().initial_state().hash();
    let welcome =
        Message::Welcome { round: 0, checkpoint: s0, state_hash: s0, config: cfg.to_toml(), peers: vec![] };
    frame(&mut v, welcome);
    assert_eq!(v.phase(), Phase::Waiting { round: None }, "configured, no task");
    let task = Message::CheckTask {
        round: 0,
        peer: [1; 32],
        addr: String::new(),
        segment: 0,
        unit: (0, 0),
        blob: [3; 32],
        start: [4; 32],
        end: [6; 32],
        rederive: None,
    };
    let out = frame(&mut v, task);
    assert!(out.iter().any(|a| matches!(a, ValidatorAction::Fetch { .. })), "{out:?}");
    assert_eq!(v.phase(), Phase::Checking { tasks: 1 }, "fetching what it checks");
    frame(&mut v, Message::Done { round: 1, state_hash: s0 });
    assert_eq!(v.phase(), Phase::Done);
}
