//! Secrets the stack manager hands out (API tokens, host credentials,
//! enrollment tokens) and how they are stored.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random secret with a recognisable prefix (so leaked tokens can be
/// found by secret scanners).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Secrets are 256 random bits, so a fast hash is enough: nothing to brute-force.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
