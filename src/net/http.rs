//! A small HTTP/1.1 server that cannot take the proxy down: the `/metrics` endpoint now, and
//! any later HTTP listener (the review page) through the same [`serve`].
//!
//! Whoever reaches an HTTP port must not be able to starve the POP3 sessions of file
//! descriptors or CPU. So every listener served here has:
//! - a connection cap ([`HttpLimits::max_connections`]): a permit is taken *before* `accept`,
//!   so at most that many descriptors are ever held by the listener; further connections wait
//!   in the kernel's accept queue (or are dropped by the kernel when it is full), costing
//!   popsift nothing;
//! - a header deadline ([`HttpLimits::header_timeout`]): the request head must be complete
//!   within it, from the connection's first byte (a slowloris client sending one byte a
//!   second is cut off) and again while a kept-alive connection waits for its next request
//!   (the idle timeout);
//! - a lifetime ([`HttpLimits::connection_lifetime`]) bounding the whole connection, a client
//!   that reads the response slowly included;
//! - a small header buffer, and request bodies are never read;
//! - accept errors (`EMFILE`, `ENFILE`, `ENOBUFS`…) logged through an [`AcceptErrors`] gate
//!   (once per interval, with the count suppressed since) and followed by a back-off.
//!
//! hyper does the HTTP/1.1 parsing (RFC 9112); this module owns only the limits and the loop.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; also the most descriptors the listener holds.
    pub max_connections: usize,
    /// The request head must arrive within this (first request and each kept-alive one).
    pub header_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it is doing.
    pub connection_lifetime: Duration,
    /// Largest request head buffered (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
}

impl HttpLimits {
    /// For `/metrics`: a Prometheus server or two scrape it every few seconds with one short
    /// request, so a handful of connections and a short header deadline are plenty.
    pub const METRICS: HttpLimits = HttpLimits {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        connection_lifetime: Duration::from_secs(30),
        max_header_bytes: 16 << 10,
    };
}

/// Rate-limits the log of a failing `accept`: the first error of an interval is logged (with
/// how many were suppressed since the last one logged), the rest only counted. The caller
/// backs off after every error ([`ACCEPT_BACKOFF`]), so a descriptor shortage never turns
/// into a hot loop or a flood of log lines.
#[derive(Debug)]
pub struct AcceptErrors {
    what: &'static str,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

/// Pause after a failed `accept` before trying again: long enough that a descriptor shortage
/// costs no CPU, short enough that service resumes promptly once descriptors are free.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl AcceptErrors {
    /// A gate logging at most once per `interval`; `what` names the listener in the log.
    pub fn new(what: &'static str, interval: Duration) -> AcceptErrors {
        AcceptErrors { what, interval, last: None, suppressed: 0 }
    }

    /// Records one failed `accept` at `now`; returns the number of errors suppressed since
    /// the last logged one when this one should be logged, `None` when it is only counted.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Records `e`, logs it when due, then sleeps [`ACCEPT_BACKOFF`].
    pub async fn failed(&mut self, e: &std::io::Error, addr: Option<SocketAddr>) {
        if let Some(suppressed) = self.record(Instant::now()) {
            let addr = addr.map(|a| a.to_string()).unwrap_or_default();
            tracing::error!(
                listener = self.what,
                %addr,
                error = %e,
                suppressed,
                "accept failed; backing off (further errors logged at most once per {:?})",
                self.interval
            );
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Serves HTTP/1.1 on `listener` with `limits`, answering each request with `handler`,
/// until the task is dropped. Never returns on its own; accept errors are logged and
/// survived.
pub async fn serve<H, F>(listener: TcpListener, what: &'static str, limits: HttpLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut errors = AcceptErrors::new(what, Duration::from_secs(1));
    loop {
        // Permit first: at the cap, nothing is accepted (the kernel queues or drops).
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                drop(permit);
                errors.failed(&e, local).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_lifetime, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(listener = what, error = %e, "HTTP connection ended"),
                Err(_) => tracing::debug!(listener = what, "HTTP connection closed at its lifetime limit"),
            }
            drop(permit);
        });
    }
}

/// A response with `status`, `content_type` and `body`.
pub fn response(
    status: hyper::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_logged_once_per_interval() {
        let mut g = AcceptErrors::new("test", Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(g.record(t0), Some(0));
        for i in 1..1000 {
            assert_eq!(g.record(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(g.record(t0 + Duration::from_millis(1000)), Some(999));
        assert_eq!(g.record(t0 + Duration::from_millis(1500)), None);
        assert_eq!(g.record(t0 + Duration::from_millis(2500)), Some(1));
    }
}
