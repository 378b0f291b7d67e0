//! The drain deadline beside a running session (graceful shutdown, see
//! [`crate::net::listener`]): once it has passed, the session ends with `CutOff`.
//!
//! Not a `select!` over the session and the deadline's watch (issue 16): a select polls every
//! branch at every wake-up of the task, and the watch's wait (through tokio's cooperative
//! budget) and the select's random start cost ~500 instructions per one-at-a-time RETR, which
//! wakes a session twice (callgrind). Here the deadline's wait has a waker of its own that marks
//! it due before it wakes the session, so it is polled only when it has news; every other
//! wake-up of the session costs an atomic load and a waker comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::watch;

/// Polls `work` until it ends (`Some`) or the drain deadline announced on `deadline` has
/// passed (`None`; the caller then drops `work` where it stands). `work` comes pinned by the
/// caller and this future holds two pointers: the session's future is what every idle
/// session keeps (`driver`'s size test), so neither `work` nor the wait are held inline.
pub fn until_cut_off<F: Future>(deadline: watch::Receiver<bool>, work: Pin<&mut F>) -> UntilCutOff<'_, F> {
    UntilCutOff { work, deadline: Box::new(Deadline::new(deadline)) }
}

/// See [`until_cut_off`].
pub struct UntilCutOff<'a, F> {
    work: Pin<&'a mut F>,
    deadline: Box<Deadline>,
}

impl<F: Future> Future for UntilCutOff<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.deadline.passed(cx) {
            return Poll::Ready(None);
        }
        self.work.as_mut().poll(cx).map(Some)
    }
}

/// Resolves when the deadline has passed (never, if the sender is gone without it).
async fn passed(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type Passed = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Deadline {
    passed: Passed,
    news: Arc<News>,
    /// `news` as a waker, made once.
    waker: Waker,
    /// The session's waker last handed to `news` (compared, not cloned, at each poll).
    seen: Option<Waker>,
}

/// The deadline's own waker: marks it due, then wakes the session.
struct News {
    due: AtomicBool,
    session: Mutex<Option<Waker>>,
}

impl News {
    fn session(&self) -> MutexGuard<'_, Option<Waker>> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Wake for News {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        if let Some(w) = self.session().as_ref() {
            w.wake_by_ref();
        }
    }
}

impl Deadline {
    fn new(rx: watch::Receiver<bool>) -> Deadline {
        // Due at first, so the first poll registers the wait with the watch.
        let news = Arc::new(News { due: AtomicBool::new(true), session: Mutex::new(None) });
        Deadline { passed: Box::pin(passed(rx)), waker: Waker::from(news.clone()), news, seen: None }
    }

    /// Whether the deadline has passed; polls its wait only when its waker has fired since.
    fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        // The session's waker is handed over before `due` is read: a wake-up after the read
        // then reaches the waker this poll's task answers to.
        if !self.seen.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *self.news.session() = Some(cx.waker().clone());
            self.seen = Some(cx.waker().clone());
        }
        if !self.news.due.load(Ordering::Acquire) || !self.news.due.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.passed.as_mut().poll(&mut Context::from_waker(&self.waker)).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn work_that_ends_first_is_returned() {
        let (_tx, rx) = watch::channel(false);
        assert_eq!(until_cut_off(rx, std::pin::pin!(async { 7 })).await, Some(7));
    }

    #[tokio::test]
    async fn a_waiting_session_is_cut_off_when_the_deadline_passes() {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move { until_cut_off(rx, std::pin::pin!(std::future::pending::<()>())).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished());
        tx.send(true).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), task).await.expect("cut off in time").unwrap();
        assert_eq!(r, None);
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
            until_cut_off(rx, work).await
        });
        for _ in 0..200 {
            ping.send(()).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert!(!task.is_finished());
        tx.send(true).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), task).await.expect("cut off in time").unwrap();
        assert_eq!(r, None);
    }

    /// A deadline that had passed before the session started ends it at its first poll.
    #[tokio::test]
    async fn a_deadline_already_passed_ends_the_session_at_once() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        assert_eq!(until_cut_off(rx, std::pin::pin!(std::future::pending::<()>())).await, None);
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
        let r = until_cut_off(rx, work).await;
        assert_eq!(r, Some(3));
    }
}
