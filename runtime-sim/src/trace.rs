//! The run's fingerprint: every processed event folds into a 64-bit FNV-1a hash; optionally
//! each one is also written out as a JSON line. Same seed, same hash.

use sluice_core::Input;

use crate::world::Nanos;

pub struct Trace {
    hash: u64,
    lines: Option<Vec<String>>,
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    pub fn new() -> Trace {
        Trace { hash: 0xcbf2_9ce4_8422_2325, lines: None }
    }

    /// Keep every event as a JSON line as well.
    pub fn keep_lines(&mut self) {
        self.lines = Some(Vec::new());
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    fn mix(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn record(&mut self, at: Nanos, kind: &str, a: u64, b: u64) {
        self.mix(&at.to_le_bytes());
        self.mix(kind.as_bytes());
        self.mix(&a.to_le_bytes());
        self.mix(&b.to_le_bytes());
        if let Some(l) = &mut self.lines {
            l.push(format!("{{\"t_ns\":{at},\"event\":\"{kind}\",\"a\":{a},\"b\":{b}}}"));
        }
    }

    /// An event kept as a line only, outside the fingerprint (what a run's picture needs that
    /// the hash does not: which client opened a connection, which API a request is).
    pub fn note(&mut self, at: Nanos, kind: &str, a: u64, b: u64) {
        if let Some(l) = &mut self.lines {
            l.push(format!("{{\"t_ns\":{at},\"event\":\"{kind}\",\"a\":{a},\"b\":{b}}}"));
        }
    }

    pub fn record_bytes(&mut self, at: Nanos, kind: &str, a: u64, bytes: &[u8]) {
        let mut h = Trace::new();
        h.mix(bytes);
        self.record(at, kind, a, h.hash);
    }

    pub fn record_input(&mut self, at: Nanos, node: usize, input: &Input) {
        match input {
            Input::Request { conn, frame } => {
                let mut h = Trace::new();
                h.mix(frame);
                self.record(at, "request", (node as u64) << 32 | conn.0, h.hash);
            }
            Input::ConnClosed { conn } => self.record(at, "conn-closed", node as u64, conn.0),
            Input::DiskDone { op, result } => {
                self.record(at, "disk", node as u64, op.0 << 1 | u64::from(result.is_ok()))
            }
            Input::Peer { from, .. } => self.record(at, "peer", node as u64, from.0 as u64),
            Input::Timeout => self.record(at, "timeout", node as u64, 0),
            Input::ShutdownRequested => self.record(at, "shutdown-requested", node as u64, 0),
        }
    }
}
