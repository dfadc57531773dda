//! A real storage node for the volume tests: the `storage-agent` binary
//! with its own iSCSI target on a loopback portal, enrolled in the test's
//! stack manager like any storage host.

use std::path::Path;

use api::resources::{EnrollmentTokenCreate, HostKind};
use testkit::StorageAgent;

use super::sibling_bin;

pub async fn start_storage(admin: &api::Client, internal_url: &str, dir: &Path) -> StorageAgent {
    let token = admin
        .enrollment_token_create(&EnrollmentTokenCreate {
            kind: HostKind::Storage,
            rack: None,
            expires_in_secs: 600,
        })
        .await
        .expect("storage enrollment token");
    let agent = StorageAgent::start(
        &sibling_bin("storage-agent"),
        dir,
        internal_url,
        &token.secret,
    );
    agent.enrolled(admin).await;
    agent
}
