//! How the provisioner hears about machines. Hooks run inline on the
//! packet path, so implementations must not block: hand off to a channel
//! (the `UnboundedSender<Event>` impl does exactly that).

use serde::{Deserialize, Serialize};

use crate::leases::Lease;
use crate::mac::Mac;
use crate::relay::RelayAgent;

/// A machine without a reservation asked for an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownClient {
    pub mac: Mac,
    pub arch: Option<u16>,
    /// Option 60 as text (e.g. "PXEClient:Arch:00007:UNDI:003016").
    pub vendor_class: Option<String>,
    pub relay: Option<RelayAgent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    UnknownClient(UnknownClient),
    LeaseBound(Lease),
}

pub trait Hooks: Send + Sync + 'static {
    /// Reported once per MAC (again after its reservation is removed), so a
    /// PXE ROM retrying every few seconds does not flood the provisioner.
    fn unknown_client(&self, _client: &UnknownClient) {}

    /// A lease was newly bound, moved to another address, or its relay data
    /// (switch port) changed. Plain renewals do not fire.
    fn lease_bound(&self, _lease: &Lease) {}
}

/// No-op hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

impl Hooks for tokio::sync::mpsc::UnboundedSender<Event> {
    fn unknown_client(&self, client: &UnknownClient) {
        // A dropped receiver just means nobody listens any more.
        let _ = self.send(Event::UnknownClient(client.clone()));
    }

    fn lease_bound(&self, lease: &Lease) {
        let _ = self.send(Event::LeaseBound(lease.clone()));
    }
}

impl<H: Hooks> Hooks for std::sync::Arc<H> {
    fn unknown_client(&self, client: &UnknownClient) {
        (**self).unknown_client(client)
    }

    fn lease_bound(&self, lease: &Lease) {
        (**self).lease_bound(lease)
    }
}
