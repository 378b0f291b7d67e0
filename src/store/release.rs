//! Taking a store's redb handle to close it when no session runs (`net::idle_release`): the
//! one rule both embedded stores (header cache, decision history) follow before they open
//! their file again with an empty page cache.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::Database;

/// The open database in `slot`, taken out to be closed, if it has a page cache worth giving
/// back and nobody else holds it. Otherwise what `release_memory` answers: `Err(true)` when
/// there is nothing to give back (not open, or not used since it was opened), `Err(false)`
/// when a reader or writer still holds the handle (left in place; tried again later, so no
/// transaction is cut short).
pub fn take_for_release(slot: &mut Option<Arc<Database>>, used: &AtomicBool) -> Result<Database, bool> {
    if slot.is_some() && !used.load(Ordering::Relaxed) {
        return Err(true);
    }
    let shared = slot.take().ok_or(true)?;
    Arc::try_unwrap(shared).map_err(|shared| {
        *slot = Some(shared);
        false
    })
}
