//! Crate-wide error type.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::mac::Mac;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("lease database {path}: {source}")]
    LeaseDb {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reservation for {mac}: {ip} is already reserved for {other}")]
    ReservationConflict { mac: Mac, ip: Ipv4Addr, other: Mac },
    #[error("reservation for {mac}: {ip} is not inside any configured subnet")]
    ReservationOutsideSubnets { mac: Mac, ip: Ipv4Addr },
    #[error("encoding reply: {0}")]
    Encode(String),
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::LeaseDb { source, .. } => source,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
        }
    }
}
