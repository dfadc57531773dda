//! What follows a store write that agents must learn about: giving a
//! deleted resource's capacity back to the scheduler's in-memory view and
//! waking the reconcilers of the hosts concerned. The statements are in
//! `store::agents` and `store::instances`.

use api::ids::{InstanceId, VolumeId};

use crate::error::ApiResult;
use crate::state::AppState;

/// Finishes deleting an instance once its host confirmed (see
/// `Store::instance_finalize_delete`), then gives its capacity back to the
/// scheduler's view and wakes the storage nodes of its volumes.
pub async fn finalize_instance_delete(state: &AppState, id: InstanceId) -> ApiResult<()> {
    if let Some(done) = state.store.instance_finalize_delete(id).await? {
        if let Some(c) = done.value {
            state.scheduler.apply(c.reversed());
        }
        for h in done.hosts {
            state.reconciler.notify(h);
        }
    }
    Ok(())
}

/// Finishes deleting a volume once its storage node confirmed (see
/// `Store::volume_finalize_delete`).
pub async fn finalize_volume_delete(state: &AppState, id: VolumeId) -> ApiResult<()> {
    let claims = state.store.volume_finalize_delete(id).await?;
    for (i, c) in claims.iter().enumerate() {
        state.scheduler.apply(c.reversed());
        if i > 0 {
            // A copy's node drops its data in its orphan sweep.
            state.reconciler.notify_orphans(c.host);
        }
    }
    Ok(())
}
