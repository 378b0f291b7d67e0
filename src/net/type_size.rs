//! Test helpers: the size of what a function returns (an `async fn`'s future), from the
//! function item alone, without calling it. Issue 16 bounds the futures every idle session
//! keeps (`driver`'s and `listener`'s size tests).

/// The size of what a two-argument function returns.
pub fn output_size2<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// The size of what a three-argument function returns.
pub fn output_size3<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}
