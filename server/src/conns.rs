//! The open connections, for admission under a flood. A server that stops accepting at its
//! connection cap can be locked up by idle sockets alone: a few thousand half-open or trickling
//! connections hold every slot, and then nothing answers, health probes included. So the
//! accept loop never stops; at the cap (overall, or for one client address when that limit is
//! set) a newcomer takes the place of the oldest connection with no request in flight (a
//! trickling header, an idle keep-alive), and is refused only when every connection is
//! serving a request. Connections with requests in flight are never closed for a newcomer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// One open connection as the table sees it.
struct Conn {
    ip: IpAddr,
    opened: Instant,
    /// Requests in flight, counted until their response body is done.
    busy: Arc<AtomicUsize>,
    /// Told to close the connection when it is evicted.
    close: Arc<Notify>,
}

/// What a newly accepted connection gets: its id, its in-flight counter and its close signal.
pub struct Admitted {
    pub id: u64,
    pub busy: Arc<AtomicUsize>,
    pub close: Arc<Notify>,
}

#[derive(Default)]
pub struct ConnTable {
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicUsize,
}

impl ConnTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        // Every update is a single insert or remove, so a poisoned map is still consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Admits a connection from `ip`, evicting the oldest idle one where a limit is reached
    /// (`per_ip` 0: no per-address limit). `None`: at a limit with nothing idle to evict.
    pub fn admit(&self, ip: IpAddr, max: usize, per_ip: usize) -> Option<Admitted> {
        let mut conns = self.lock();
        if per_ip > 0 && conns.values().filter(|c| c.ip == ip).count() >= per_ip {
            evict_oldest_idle(&mut conns, Some(ip))?;
        }
        if conns.len() >= max {
            evict_oldest_idle(&mut conns, None)?;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let (busy, close) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        conns.insert(id, Conn { ip, opened: Instant::now(), busy: busy.clone(), close: close.clone() });
        Some(Admitted { id, busy, close })
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Signals the oldest connection with no request in flight (from `ip` only, if given) to close
/// and forgets it; `None` if there is none.
fn evict_oldest_idle(conns: &mut HashMap<u64, Conn>, ip: Option<IpAddr>) -> Option<()> {
    let (&id, _) = conns
        .iter()
        .filter(|(_, c)| ip.is_none_or(|ip| c.ip == ip) && c.busy.load(Ordering::Acquire) == 0)
        .min_by_key(|(_, c)| c.opened)?;
    let conn = conns.remove(&id).expect("found above");
    conn.close.notify_one();
    Some(())
}

/// Holds a connection's in-flight count up while a request's response is being sent.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub fn start(counter: &Arc<AtomicUsize>) -> Busy {
        counter.fetch_add(1, Ordering::AcqRel);
        Busy(counter.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room_and_busy_ones_never_do() {
        let t = ConnTable::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = t.admit(a, 2, 0).unwrap();
        let second = t.admit(a, 2, 0).unwrap();
        let _busy = Busy::start(&first.busy);
        // At the cap: the idle second goes, the busy first stays.
        let third = t.admit(b, 2, 0).unwrap();
        assert_eq!(t.len(), 2);
        let _busy3 = Busy::start(&third.busy);
        drop(second);
        // Everything busy: a newcomer is refused.
        assert!(t.admit(b, 2, 0).is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_per_address_limit_evicts_that_address_only() {
        let t = ConnTable::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let from_b = t.admit(b, 10, 2).unwrap();
        let a1 = t.admit(a, 10, 2).unwrap();
        t.admit(a, 10, 2).unwrap();
        t.admit(a, 10, 2).unwrap();
        assert_eq!(t.len(), 3, "a's oldest idle made room for a's third");
        assert!(t.lock().contains_key(&from_b.id) && !t.lock().contains_key(&a1.id));
    }
}
