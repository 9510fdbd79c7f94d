//! `max.connections` and `max.connections.per.ip` (with `max.connections.per.ip.overrides`),
//! as Kafka applies them on a client listener: at the total, the listener stops accepting
//! until a connection closes (new clients wait in the kernel's backlog); past an address's
//! own limit, its new connection is closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: usize,
    overrides: HashMap<IpAddr, usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
pub struct Slot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    _total: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl ConnLimits {
    pub fn new(total: usize, per_ip: usize, overrides: HashMap<IpAddr, usize>) -> Arc<ConnLimits> {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnLimits { total: Arc::new(Semaphore::new(total)), per_ip, overrides, open: Mutex::default() })
    }

    /// Waits for a place under `max.connections` (call before accepting).
    pub async fn place(&self) -> OwnedSemaphorePermit {
        self.total.clone().acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Admits a connection from `ip` into the place taken, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, place: OwnedSemaphorePermit) -> Result<Slot, usize> {
        let limit = self.overrides.get(&ip).copied().unwrap_or(self.per_ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= limit {
            if *n == 0 {
                open.remove(&ip);
            }
            return Err(limit);
        }
        *n += 1;
        Ok(Slot { limits: self.clone(), ip, _total: place })
    }
}

/// `max.connections.per.ip.overrides`: `host:count,...` (IP addresses; `localhost` allowed).
pub fn parse_overrides(value: &str) -> Result<HashMap<IpAddr, usize>, String> {
    let mut out = HashMap::new();
    for one in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || format!("max.connections.per.ip.overrides: {one:?} is not host:count");
        let (host, n) = one.rsplit_once(':').ok_or_else(bad)?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        let host = host.trim().trim_matches(|c| c == '[' || c == ']');
        let ip: IpAddr =
            if host == "localhost" { IpAddr::from([127, 0, 0, 1]) } else { host.parse().map_err(|_| bad())? };
        out.insert(ip, n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_ip_limits_and_their_release() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let limits = ConnLimits::new(10, 2, parse_overrides("10.0.0.2:0").unwrap());
        let s1 = limits.admit(a, limits.place().await).unwrap();
        let _s2 = limits.admit(a, limits.place().await).unwrap();
        assert_eq!(limits.admit(a, limits.place().await).err(), Some(2));
        assert_eq!(limits.admit(b, limits.place().await).err(), Some(0), "an override of 0 refuses the address");
        drop(s1);
        assert!(limits.admit(a, limits.place().await).is_ok(), "a closed connection frees its place");
        assert!(parse_overrides("nonsense").is_err());
    }

    #[tokio::test]
    async fn the_total_waits_for_a_place() {
        let limits = ConnLimits::new(1, 5, HashMap::new());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.admit(ip, limits.place().await).unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), limits.place()).await;
        assert!(waiting.is_err(), "no place while the one connection is open");
        drop(first);
        let place = tokio::time::timeout(std::time::Duration::from_millis(50), limits.place()).await;
        assert!(place.is_ok());
    }
}
