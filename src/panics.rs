//! The text of a caught panic, for the places that catch one rather than let it take the
//! process down: the session boundary (`net::listener`) and every call into redb (the header
//! cache and the classifier's model store), where a damaged file can trip an assertion.
use std::any::Any;

/// The panic's message (`panic!("…")` carries a `&str` or a `String`), or `(no message)`.
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
