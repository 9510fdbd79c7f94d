//! One seed, split into independent streams, so that changing how often one kind of fault
//! happens does not reshuffle the workload or the network.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub struct Streams {
    seed: u64,
    pub network: ChaCha8Rng,
    pub disk: ChaCha8Rng,
    pub clock: ChaCha8Rng,
    pub workload: ChaCha8Rng,
    pub faults: ChaCha8Rng,
}

impl Streams {
    pub fn new(seed: u64) -> Streams {
        let s = |k: u64| ChaCha8Rng::seed_from_u64(splitmix(seed ^ splitmix(k)));
        Streams { seed, network: s(1), disk: s(2), clock: s(3), workload: s(4), faults: s(5) }
    }

    /// The seed a node's core gets for its `inc`-th incarnation.
    pub fn node_seed(&self, node: usize, inc: u64) -> u64 {
        splitmix(self.seed ^ splitmix(1000 + node as u64) ^ splitmix(inc.wrapping_mul(7919)))
    }
}
