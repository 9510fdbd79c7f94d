//! `max.connections` and `max.connections.per.ip` (with `max.connections.per.ip.overrides`),
//! as Kafka applies them on a client listener: at the total, the listener stops accepting
//! until a connection closes (new clients wait in the kernel's backlog); past an address's
//! own limit, its new connection is closed at once.
//!
//! The three are dynamic broker configs: the core thread hands every change to [`ConnLimits::set`].
//! As in Kafka, a lower limit closes no open connection; new ones wait (or are refused) until
//! enough have closed. A lower total is carried as a debt: the places of connections that close
//! are kept back until it is paid.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sluice_core::config::ConnectionLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct ConnLimits {
    places: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    total: usize,
    per_ip: usize,
    overrides: HashMap<IpAddr, usize>,
    open: HashMap<IpAddr, usize>,
    /// Places to take out of circulation as connections close (the total was lowered below
    /// what was open).
    debt: usize,
}

/// One admitted connection; dropping it frees its place.
pub struct Slot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    place: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.limits.lock();
        if let Some(n) = st.open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.open.remove(&self.ip);
            }
        }
        if let Some(place) = self.place.take() {
            st.give_back(place);
        }
    }
}

impl State {
    /// A place no longer used: back to the listener, or kept back to pay the debt.
    fn give_back(&mut self, place: OwnedSemaphorePermit) {
        if self.debt > 0 {
            self.debt -= 1;
            place.forget();
        }
    }
}

fn total_of(limits: &ConnectionLimits) -> usize {
    limits.total.clamp(1, Semaphore::MAX_PERMITS)
}

/// The overrides by address (`localhost` is 127.0.0.1); the core has checked their syntax.
fn resolve(limits: &ConnectionLimits) -> Result<HashMap<IpAddr, usize>, String> {
    let mut out = HashMap::new();
    for (host, n) in limits.overrides()? {
        let ip = if host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse().map_err(|_| format!("max.connections.per.ip.overrides: {host:?} is not an IP address"))?
        };
        out.insert(ip, n);
    }
    Ok(out)
}

impl ConnLimits {
    pub fn new(limits: &ConnectionLimits) -> Result<Arc<ConnLimits>, String> {
        let total = total_of(limits);
        let state = State { total, per_ip: limits.per_ip, overrides: resolve(limits)?, open: HashMap::new(), debt: 0 };
        Ok(Arc::new(ConnLimits { places: Arc::new(Semaphore::new(total)), state: Mutex::new(state) }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New limits (a dynamic config changed): they apply to connections accepted from now.
    pub fn set(&self, limits: &ConnectionLimits) {
        let overrides = match resolve(limits) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "connection limits not applied");
                return;
            }
        };
        let mut st = self.lock();
        let total = total_of(limits);
        if total > st.total {
            let more = total - st.total;
            let paid = more.min(st.debt);
            st.debt -= paid;
            self.places.add_permits(more - paid);
        } else {
            let fewer = st.total - total;
            let forgotten = self.places.forget_permits(fewer);
            st.debt += fewer - forgotten;
        }
        st.total = total;
        st.per_ip = limits.per_ip;
        st.overrides = overrides;
        tracing::info!(total, per_ip = limits.per_ip, overrides = %limits.per_ip_overrides, "connection limits set");
    }

    /// Waits for a place under `max.connections` (call before accepting).
    pub async fn place(&self) -> OwnedSemaphorePermit {
        self.places.clone().acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Admits a connection from `ip` into the place taken, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, place: OwnedSemaphorePermit) -> Result<Slot, usize> {
        let mut st = self.lock();
        let limit = st.overrides.get(&ip).copied().unwrap_or(st.per_ip);
        let n = st.open.get(&ip).copied().unwrap_or(0);
        if n >= limit {
            st.give_back(place);
            return Err(limit);
        }
        st.open.insert(ip, n + 1);
        Ok(Slot { limits: self.clone(), ip, place: Some(place) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_ip: usize, overrides: &str) -> ConnectionLimits {
        ConnectionLimits { total, per_ip, per_ip_overrides: overrides.to_string() }
    }

    async fn no_place(l: &ConnLimits) -> bool {
        tokio::time::timeout(Duration::from_millis(50), l.place()).await.is_err()
    }

    #[tokio::test]
    async fn per_ip_limits_and_their_release() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let limits = ConnLimits::new(&limits(10, 2, "10.0.0.2:0")).unwrap();
        let s1 = limits.admit(a, limits.place().await).unwrap();
        let _s2 = limits.admit(a, limits.place().await).unwrap();
        assert_eq!(limits.admit(a, limits.place().await).err(), Some(2));
        assert_eq!(limits.admit(b, limits.place().await).err(), Some(0), "an override of 0 refuses the address");
        drop(s1);
        assert!(limits.admit(a, limits.place().await).is_ok(), "a closed connection frees its place");
    }

    #[tokio::test]
    async fn the_total_waits_for_a_place() {
        let limits = ConnLimits::new(&limits(1, 5, "")).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.admit(ip, limits.place().await).unwrap();
        assert!(no_place(&limits).await, "no place while the one connection is open");
        drop(first);
        assert!(!no_place(&limits).await);
    }

    #[tokio::test]
    async fn limits_change_at_runtime_without_closing_what_is_open() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let l = ConnLimits::new(&limits(3, 5, "")).unwrap();
        let open: Vec<Slot> = admit_n(&l, ip, 3).await;
        assert!(no_place(&l).await);
        // Raised: a place at once. Lowered to 1 with three open: none until two have closed.
        l.set(&limits(4, 5, ""));
        let fourth = l.admit(ip, l.place().await).unwrap();
        l.set(&limits(1, 5, ""));
        let mut open = open;
        open.push(fourth);
        open.truncate(2);
        assert!(no_place(&l).await, "two open, the total 1");
        open.truncate(1);
        assert!(no_place(&l).await, "one open, the total 1");
        open.clear();
        let only = l.admit(ip, l.place().await).unwrap();
        assert!(no_place(&l).await, "the total is 1 again");
        drop(only);
        // Per address, and its overrides, apply to the next connection.
        l.set(&limits(10, 1, ""));
        let one = l.admit(ip, l.place().await).unwrap();
        assert_eq!(l.admit(ip, l.place().await).err(), Some(1));
        l.set(&limits(10, 1, "10.0.0.1:2"));
        let _two = l.admit(ip, l.place().await).unwrap();
        drop(one);
    }

    async fn admit_n(l: &Arc<ConnLimits>, ip: IpAddr, n: usize) -> Vec<Slot> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(l.admit(ip, l.place().await).unwrap());
        }
        out
    }
}
