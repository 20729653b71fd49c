//! The simulated network: nodes with an uplink and a downlink of fixed bandwidth, a fixed
//! one-way latency between any two nodes, FIFO serialization on every link, and a count of
//! every byte. Transfers are computed on the virtual clock, so a run is a pure function of its
//! inputs.

/// One node's links.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub up_bps: f64,
    pub down_bps: f64,
}

/// The network state: when each link is next free, and bytes moved per node.
#[derive(Clone, Debug)]
pub struct Network {
    links: Vec<Link>,
    one_way_s: f64,
    up_free: Vec<f64>,
    down_free: Vec<f64>,
    pub sent: Vec<u64>,
    pub recv: Vec<u64>,
}

impl Network {
    /// A network of `links.len()` nodes with one-way latency `one_way_s` between any pair.
    pub fn new(links: Vec<Link>, one_way_s: f64) -> Self {
        let n = links.len();
        assert!(links.iter().all(|l| l.up_bps > 0.0 && l.down_bps > 0.0), "bandwidth must be positive");
        Self {
            links,
            one_way_s,
            up_free: vec![0.0; n],
            down_free: vec![0.0; n],
            sent: vec![0; n],
            recv: vec![0; n],
        }
    }

    /// Moves `bytes` from `from` to `to`, starting no earlier than `t`; returns when the last
    /// byte has arrived. The sender's uplink and the receiver's downlink each carry one
    /// transfer at a time, in the order transfers are issued.
    pub fn transfer(&mut self, t: f64, from: usize, to: usize, bytes: u64) -> f64 {
        let bits = bytes as f64 * 8.0;
        let up_start = t.max(self.up_free[from]);
        let up_end = up_start + bits / self.links[from].up_bps;
        self.up_free[from] = up_end;
        let down_start = (up_start + self.one_way_s).max(self.down_free[to]);
        let down_end = (down_start + bits / self.links[to].down_bps).max(up_end + self.one_way_s);
        self.down_free[to] = down_end;
        self.sent[from] += bytes;
        self.recv[to] += bytes;
        down_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_time_is_serialization_plus_latency_and_links_queue() {
        let l = Link { up_bps: 8e6, down_bps: 8e6 };
        let mut n = Network::new(vec![l, l, l], 0.05);
        // 1 MB at 8 Mbit/s = 1 s, plus 50 ms.
        assert!((n.transfer(0.0, 0, 1, 1_000_000) - 1.05).abs() < 1e-9);
        // A second transfer from node 0 waits for its uplink.
        assert!((n.transfer(0.0, 0, 2, 1_000_000) - 2.05).abs() < 1e-9);
        assert_eq!((n.sent[0], n.recv[1], n.recv[2]), (2_000_000, 1_000_000, 1_000_000));
    }
}
