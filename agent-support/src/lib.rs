//! What every Strato host agent needs, written once: enrollment and the
//! host identity, the verified image cache, running host tools, and file
//! helpers.

pub mod cli;
pub mod config;
pub mod enroll;
pub mod error;
pub mod exec;
pub mod fs;
pub mod http;
pub mod images;

pub use error::{Error, Result};
