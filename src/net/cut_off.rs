//! The drain deadline beside a running session (graceful shutdown, see
//! [`crate::net::listener`]): once it has passed, the session ends with `CutOff`.
//!
//! Not a `select!` over the session and the deadline's watch (issue 16): a select polls every
//! branch at every wake-up of the task, and the watch's wait (through tokio's cooperative
//! budget) and the select's random start cost ~500 instructions per one-at-a-time RETR, which
//! wakes a session twice (callgrind). Here the wait is polled once to register with the watch,
//! and again only when the watch's version moved (one atomic load per wake-up): a registered
//! wait stays registered until the watch's news wakes the session.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// Polls `work` until it ends (`Some`) or the drain deadline announced on `deadline` has
/// passed (`None`; the caller then drops `work` where it stands). `work` comes pinned by the
/// caller (an `async fn` would keep it twice, see `driver`'s size test). `deadline` is the
/// listener's receiver, never marked seen here: its `has_changed` says whether the watch
/// moved since it was made (the only send is the deadline's).
///
/// Every poll of the session must reach this future with the task's own waker (as the
/// layers around a session do: `Unwinding`, the task-locals): the registered wait wakes
/// the waker of the poll that registered it.
pub fn until_cut_off<'a, F: Future>(deadline: &'a watch::Receiver<bool>, work: Pin<&'a mut F>) -> UntilCutOff<'a, F> {
    // Outside tokio's cooperative budget: a first poll with the task's budget spent would
    // return `Pending` without registering, and no later poll would register it.
    let passed = Box::pin(tokio::task::unconstrained(passed(deadline.clone())));
    UntilCutOff { work, passed, probe: deadline, registered: false }
}

/// See [`until_cut_off`]. Sits in the future every idle session keeps; on the heap only the
/// watch's wait, as before.
pub struct UntilCutOff<'a, F> {
    work: Pin<&'a mut F>,
    passed: Pin<Box<dyn Future<Output = ()> + Send>>,
    probe: &'a watch::Receiver<bool>,
    registered: bool,
}

impl<F: Future> Future for UntilCutOff<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = &mut *self;
        // Sender gone (`Err`): the wait is polled, and pends for good.
        if !me.registered || me.probe.has_changed().unwrap_or(true) {
            me.registered = true;
            if me.passed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        me.work.as_mut().poll(cx).map(Some)
    }
}

/// Resolves when the deadline has passed (never, if the sender is gone without it).
async fn passed(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The session `task` runs on until the deadline is announced on `tx`, then ends cut off.
    async fn cut_off_in_time<T: std::fmt::Debug>(tx: watch::Sender<bool>, task: tokio::task::JoinHandle<Option<T>>) {
        assert!(!task.is_finished(), "ended before the deadline");
        tx.send(true).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), task).await.expect("cut off in time").unwrap();
        assert!(r.is_none(), "cut off, not ended by its work: {r:?}");
    }

    #[tokio::test]
    async fn work_that_ends_first_is_returned() {
        let (_tx, rx) = watch::channel(false);
        let work = std::pin::pin!(async { 7 });
        assert_eq!(until_cut_off(&rx, work).await, Some(7));
    }

    #[tokio::test]
    async fn a_waiting_session_is_cut_off_when_the_deadline_passes() {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let work = std::pin::pin!(std::future::pending::<()>());
            until_cut_off(&rx, work).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cut_off_in_time(tx, task).await;
    }

    /// The session woken by its own work many times before the deadline: the deadline is
    /// still seen (its news is not lost among the session's wake-ups), and not before it passed.
    #[tokio::test]
    async fn a_busy_session_is_cut_off_too() {
        let (tx, rx) = watch::channel(false);
        let (ping, mut pong) = tokio::sync::mpsc::channel::<()>(1);
        let task = tokio::spawn(async move {
            let work = std::pin::pin!(async move {
                let mut n = 0u32;
                while pong.recv().await.is_some() {
                    n += 1;
                }
                n
            });
            until_cut_off(&rx, work).await
        });
        for _ in 0..200 {
            ping.send(()).await.unwrap();
            tokio::task::yield_now().await;
        }
        cut_off_in_time(tx, task).await;
    }

    /// The first poll comes with the task's cooperative budget spent (a session whose
    /// admission read much): the wait still registers, and the deadline ends the session.
    #[tokio::test]
    async fn a_first_poll_without_budget_still_registers() {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let work = std::pin::pin!(std::future::pending::<()>());
            let mut fut = until_cut_off(&rx, work);
            std::future::poll_fn(|cx| {
                // Spend the budget: `consume_budget` pends once it is gone.
                while std::pin::pin!(tokio::task::consume_budget()).poll(cx).is_ready() {}
                assert!(Pin::new(&mut fut).poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            fut.await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cut_off_in_time(tx, task).await;
    }

    /// A deadline that had passed before the session started ends it at its first poll.
    #[tokio::test]
    async fn a_deadline_already_passed_ends_the_session_at_once() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        let work = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(until_cut_off(&rx, work).await, None);
    }

    /// The sender gone without the deadline: the work runs on to its end.
    #[tokio::test]
    async fn no_deadline_without_a_sender() {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        let work = std::pin::pin!(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            3
        });
        let r = until_cut_off(&rx, work).await;
        assert_eq!(r, Some(3));
    }
}
