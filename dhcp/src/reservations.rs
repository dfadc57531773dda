//! Static MAC → address assignments, indexed both ways so allocation can
//! skip addresses reserved for someone else in O(1).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::Reservation;
use crate::error::Error;
use crate::mac::Mac;

#[derive(Debug, Default)]
pub struct Reservations {
    by_mac: HashMap<Mac, Reservation>,
    by_ip: HashMap<Ipv4Addr, Mac>,
}

impl Reservations {
    pub fn get(&self, mac: Mac) -> Option<&Reservation> {
        self.by_mac.get(&mac)
    }

    /// The MAC an address is reserved for.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.by_ip.get(&ip).copied()
    }

    /// Adds or replaces the reservation for `r.mac`.
    pub fn insert(&mut self, r: Reservation) -> Result<Option<Reservation>, Error> {
        if let Some(other) = self.owner_of(r.ip).filter(|o| *o != r.mac) {
            return Err(Error::ReservationConflict {
                mac: r.mac,
                ip: r.ip,
                other,
            });
        }
        let prev = self.remove(r.mac);
        self.by_ip.insert(r.ip, r.mac);
        self.by_mac.insert(r.mac, r);
        Ok(prev)
    }

    pub fn remove(&mut self, mac: Mac) -> Option<Reservation> {
        let r = self.by_mac.remove(&mac)?;
        self.by_ip.remove(&r.ip);
        Some(r)
    }

    pub fn list(&self) -> Vec<Reservation> {
        let mut v: Vec<_> = self.by_mac.values().cloned().collect();
        v.sort_by_key(|r| u32::from(r.ip));
        v
    }
}
