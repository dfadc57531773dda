//! Public `/v1` resource types, one module per resource.

pub mod audit;
pub mod common;
pub mod flavor;
pub mod group;
pub mod host;
pub mod identity;
pub mod image;
pub mod instance;
pub mod keypair;
pub mod network;
pub mod quota;
pub mod system;
pub mod usage;
pub mod volume;

pub use audit::*;
pub use common::*;
pub use flavor::*;
pub use group::*;
pub use host::*;
pub use identity::*;
pub use image::*;
pub use instance::*;
pub use keypair::*;
pub use network::*;
pub use quota::*;
pub use system::*;
pub use usage::*;
pub use volume::*;
