//! The review page (issue 13): a small web UI in the proxy's process where a mailbox's owner
//! sees what popsift decided for their mail and puts mistakes right in one click.
//!
//! - [`auth`]: sessions, CSRF, the login rate limit, the POP3 and admin logins.
//! - [`pages`]: the HTML (maud: escaped by default).
//! - this file: the listener (plain HTTP on loopback, or rustls with `ui.tls` through the
//!   listeners' own [`crate::edge::tls::ServerTls`], so SIGHUP re-reads it too), routing, and
//!   the actions (`Not spam`, `Spam`, release, delete for good).
//!
//! It never takes the proxy down: a port that cannot be bound, or a TLS key that cannot be
//! read, is logged and the proxy serves on without a UI. Every store access runs on the
//! blocking pool, so a handler never holds an async worker the POP3 sessions need; the
//! listener has the connection cap and deadlines of [`crate::net::http`]. Request bodies are
//! read up to [`MAX_FORM`] octets. Everything goes through `store/` (history, quarantine,
//! classifier store); nothing here reads another module's files directly.
pub mod auth;
pub mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use maud::Markup;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, UiSettings};
use crate::net::http::{AcceptErrors, HttpLimits};
use crate::rules::RulesHandle;
use crate::store::history::{self, Decision, History, Query, Recorder, Released};
use crate::store::quarantine::{Listed, Quarantine};
use auth::{Session, Sessions, Viewer};

/// Largest form body read.
pub const MAX_FORM: usize = 16 * 1024;
/// Decisions per page.
pub const PAGE: usize = 100;
const COOKIE_NAME: &str = "popsift_session";
/// The login form's CSRF token travels in this cookie and in the form (double submit): a
/// page elsewhere cannot log a browser in to someone else's mailbox.
const LOGIN_COOKIE: &str = "popsift_login";

/// Limits of the UI listener: a person or two with a browser.
pub const LIMITS: HttpLimits = HttpLimits {
    max_connections: 64,
    header_timeout: Duration::from_secs(10),
    connection_lifetime: Duration::from_secs(120),
    max_header_bytes: 16 << 10,
};

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("review page: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("review page: TLS: {0}")]
    Tls(String),
}

/// Shared state of the UI.
pub struct Ui {
    config: Arc<Config>,
    settings: UiSettings,
    sessions: Sessions,
    history: Option<Arc<Recorder>>,
    quarantine: Quarantine,
    rules: Arc<RulesHandle>,
    secure: bool,
}

/// Starts the UI when `config.ui` is set. Returns its bound address, or the reason it could
/// not start (the caller logs it and serves on: the UI never takes the proxy down).
pub async fn start(config: Arc<Config>, rules: Arc<RulesHandle>) -> Result<Option<SocketAddr>, UiError> {
    let Some(settings) = config.ui.clone() else { return Ok(None) };
    // The listeners' own certificate holder: TLS 1.2/1.3, re-read on SIGHUP (a broken
    // pair at reload is logged and the old one stays).
    let tls = match &settings.tls {
        Some(t) => {
            let tls = crate::edge::tls::ServerTls::open(&t.cert, &t.key).map_err(|e| UiError::Tls(e.to_string()))?;
            tls.spawn_reloader();
            Some(tls)
        }
        None => None,
    };
    let listener =
        TcpListener::bind(settings.listen).await.map_err(|source| UiError::Bind { addr: settings.listen, source })?;
    let addr = listener.local_addr().map_err(|source| UiError::Bind { addr: settings.listen, source })?;
    let history = {
        let (dir, s, store) = (config.state_dir.clone(), config.history, config.store.clone());
        tokio::task::spawn_blocking(move || history::shared(&dir, s, &store)).await.ok().flatten()
    };
    let ui = Arc::new(Ui {
        quarantine: Quarantine::for_config(&config),
        sessions: Sessions::new(settings.session_ttl),
        secure: tls.is_some(),
        settings,
        history,
        rules,
        config,
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(serve(listener, tls, ui));
    tracing::info!(%addr, "review page on {scheme}://{addr}/");
    Ok(Some(addr))
}

/// The accept loop: [`crate::net::http::serve`]'s limits, plus TLS and the peer address
/// (for the login rate limit).
async fn serve(listener: TcpListener, tls: Option<Arc<crate::edge::tls::ServerTls>>, ui: Arc<Ui>) {
    let limits = LIMITS;
    let local = listener.local_addr().ok();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut errors = AcceptErrors::new("ui", Duration::from_secs(1));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                drop(permit);
                errors.failed(&e, local).await;
                continue;
            }
        };
        // Each connection takes the certificate current at its accept.
        let (ui, tls) = (ui.clone(), tls.as_ref().map(|t| t.acceptor()));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ui = ui.clone();
                async move { Ok::<_, Infallible>(handle(ui, peer.ip(), req).await) }
            });
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192));
                b
            };
            let run = async {
                match tls {
                    None => builder.serve_connection(TokioIo::new(stream), service).await.map_err(|e| e.to_string()),
                    Some(acceptor) => {
                        let s = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                            .map_err(|_| "TLS handshake timed out".to_string())?
                            .map_err(|e| format!("TLS handshake: {e}"))?;
                        builder.serve_connection(TokioIo::new(s), service).await.map_err(|e| e.to_string())
                    }
                }
            };
            match tokio::time::timeout(limits.connection_lifetime, run).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(listener = "ui", error = %e, "HTTP connection ended"),
                Err(_) => tracing::debug!(listener = "ui", "HTTP connection closed at its lifetime limit"),
            }
            drop(permit);
        });
    }
}

/// `application/x-www-form-urlencoded` decoding (also for query strings).
pub fn form_decode(s: &str) -> HashMap<String, String> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'+' => out.push(b' '),
                b'%' => match b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let mut map = HashMap::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(unescape(k)).or_insert_with(|| unescape(v));
    }
    map
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let esc = |s: &str| {
        let mut o = String::new();
        for &b in s.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                o.push(b as char);
            } else {
                o.push_str(&format!("%{b:02X}"));
            }
        }
        o
    };
    pairs.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect::<Vec<_>>().join("&")
}

type Resp = Response<Full<Bytes>>;

fn with_headers(mut r: Resp) -> Resp {
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

fn html(status: StatusCode, m: Markup) -> Resp {
    with_headers(crate::net::http::response(status, "text/html; charset=utf-8", m.into_string()))
}

fn redirect(to: &str) -> Resp {
    let mut r = crate::net::http::response(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    with_headers(r)
}

fn cookie_of(req: &Request<Incoming>, name: &str) -> Option<String> {
    for v in req.headers().get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

async fn form_body(req: Request<Incoming>) -> Option<HashMap<String, String>> {
    let body = Limited::new(req.into_body(), MAX_FORM).collect().await.ok()?.to_bytes();
    Some(form_decode(std::str::from_utf8(&body).ok()?))
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("internal error: {e}"))?
}

impl Ui {
    fn frame(&self, title: &str, s: Option<&Session>, body: Markup) -> Markup {
        let name = s.map(|s| match &s.viewer {
            Viewer::Admin => "admin".to_string(),
            Viewer::Owner { user, .. } => user.clone(),
        });
        pages::frame(title, name.as_deref().zip(s.map(|s| s.csrf.as_str())), body)
    }

    fn page(&self, status: StatusCode, title: &str, s: &Session, body: Markup) -> Resp {
        html(status, self.frame(title, Some(s), body))
    }

    fn message(&self, s: &Session, status: StatusCode, text: &str) -> Resp {
        let ok = status.is_success();
        let body = maud::html! { (pages::notice(text, ok)) p { a href="/decisions" { "Back to the decisions" } } };
        self.page(status, if ok { "Done" } else { "Not done" }, s, body)
    }

    /// The mail servers the login form offers: every configured upstream (`HOST:PORT`, each
    /// once, in listener order), or only `ui.upstream` when set. One entry: no choice shown.
    fn servers(&self) -> Vec<String> {
        if let Some(up) = &self.settings.upstream {
            return vec![up.clone()];
        }
        let mut out: Vec<String> = Vec::new();
        for l in &self.config.listeners {
            let d = l.upstream_display();
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// The listener whose upstream checks a login: the one server there is, or the one the
    /// form chose (only a configured one: the field is checked, never dialled as given).
    fn login_listener(&self, chosen: Option<&str>) -> Result<&crate::config::Listener, &'static str> {
        let servers = self.servers();
        let want = match (servers.as_slice(), chosen) {
            ([], _) => return Err("No mail server is configured."),
            ([one], _) => one.clone(),
            (_, Some(c)) if servers.iter().any(|s| s == c) => c.to_string(),
            _ => return Err("Choose your mail server from the list."),
        };
        self.config.listeners.iter().find(|l| l.upstream_display() == want).ok_or("No mail server is configured.")
    }

    fn store(&self) -> Option<Arc<dyn History>> {
        self.history.as_ref().map(|h| h.store().clone())
    }

    fn cookie(&self, value: &str, max_age: Option<u64>) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let age = max_age.map_or("; Max-Age=0".to_string(), |a| format!("; Max-Age={a}"));
        HeaderValue::from_str(&format!("{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"))
            .unwrap_or_else(|_| HeaderValue::from_static("popsift_session=; Max-Age=0"))
    }
}

async fn handle(ui: Arc<Ui>, peer: IpAddr, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = form_decode(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    let cookie = cookie_of(&req, COOKIE_NAME);
    let session = cookie.as_deref().and_then(|c| ui.sessions.get(c));
    match (&method, path.as_str()) {
        (&Method::GET, "/login") => match session {
            Some(_) => redirect("/decisions"),
            None => login_form(&ui, StatusCode::OK, None, cookie_of(&req, LOGIN_COOKIE)),
        },
        (&Method::POST, "/login") => login(&ui, peer, req).await,
        (&Method::GET, "/") => redirect(if session.is_some() { "/decisions" } else { "/login" }),
        (&Method::GET, "/favicon.ico") => {
            with_headers(crate::net::http::response(StatusCode::NOT_FOUND, "text/plain", ""))
        }
        _ => {
            let Some(s) = session else {
                return match method {
                    Method::GET => redirect("/login"),
                    _ => html(
                        StatusCode::FORBIDDEN,
                        ui.frame("Not logged in", None, pages::notice("Not logged in: nothing was changed.", false)),
                    ),
                };
            };
            if method == Method::POST {
                let Some(form) = form_body(req).await else {
                    return ui.message(&s, StatusCode::BAD_REQUEST, "The form could not be read.");
                };
                if !form.get("csrf").is_some_and(|t| auth::same(t, &s.csrf)) {
                    return ui.message(
                        &s,
                        StatusCode::FORBIDDEN,
                        "This form is out of date or forged: nothing was changed.",
                    );
                }
                return post(&ui, &s, cookie.as_deref().unwrap_or(""), &path, &form).await;
            }
            if method != Method::GET {
                return ui.message(&s, StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
            }
            get(&ui, &s, &path, &query).await
        }
    }
}

/// The login form with its CSRF token (cookie + hidden field): the browser's current one
/// when it has one (two tabs, or a favicon request, must not invalidate an open form),
/// else a fresh one.
fn login_form(ui: &Ui, status: StatusCode, error: Option<&str>, current: Option<String>) -> Resp {
    let token = current
        .filter(|t| t.len() == 43 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .unwrap_or_else(|| ui.sessions.login_token());
    let mut r = html(status, ui.frame("Log in", None, pages::login(error, &token, &ui.servers())));
    let secure = if ui.secure { "; Secure" } else { "" };
    if let Ok(v) =
        HeaderValue::from_str(&format!("{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict{secure}"))
    {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

async fn login(ui: &Arc<Ui>, peer: IpAddr, req: Request<Incoming>) -> Resp {
    let login_cookie = cookie_of(&req, LOGIN_COOKIE);
    let fail = |status, text: &str| login_form(ui, status, Some(text), login_cookie.clone());
    let Some(form) = form_body(req).await else { return fail(StatusCode::BAD_REQUEST, "The form could not be read.") };
    let token_ok = match (&login_cookie, form.get("csrf")) {
        (Some(c), Some(f)) => !c.is_empty() && auth::same(c, f),
        _ => false,
    };
    if !token_ok {
        return fail(StatusCode::FORBIDDEN, "The login form was out of date: please try again.");
    }
    // Counted only once the form is genuine: a password is about to be checked.
    if !ui.sessions.allow_attempt(peer) {
        return fail(StatusCode::TOO_MANY_REQUESTS, "Too many login attempts from your address: wait a minute.");
    }
    let (user, password) =
        (form.get("user").cloned().unwrap_or_default(), form.get("password").cloned().unwrap_or_default());
    let viewer = match (&ui.settings.admin_password_hash, user.as_str()) {
        (Some(hash), auth::ADMIN_USER) => {
            let (hash, password) = (hash.clone(), password.clone());
            let ok = tokio::task::spawn_blocking(move || auth::admin_ok(&hash, &password)).await.unwrap_or(false);
            if !ok {
                tracing::info!(%peer, "review page: admin login refused");
                return fail(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
            }
            Viewer::Admin
        }
        _ => {
            let listener = match ui.login_listener(form.get("server").map(String::as_str)) {
                Ok(l) => l,
                Err(text) => return fail(StatusCode::BAD_REQUEST, text),
            };
            let limit = ui.settings.login_timeout;
            let checked = tokio::time::timeout(limit, auth::pop3_login(&ui.config, listener, &user, &password)).await;
            let Ok(checked) = checked else {
                tracing::warn!(%peer, upstream = %listener.upstream_display(), timeout_s = limit.as_secs_f64(),
                    "review page: login check timed out (ui.login_timeout)");
                return fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "Your mail server did not answer the login check within {} s: please try again later.",
                        limit.as_secs()
                    ),
                );
            };
            match checked {
                Ok((upstream, user)) => {
                    Viewer::Owner { mailbox: history::mailbox_key(&upstream, &user), user, upstream }
                }
                Err(auth::LoginError::Refused) => {
                    tracing::info!(%peer, "review page: login refused by the mail server");
                    return fail(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "review page: login could not be checked");
                    return fail(StatusCode::BAD_GATEWAY, &e.to_string());
                }
            }
        }
    };
    let (id, _) = ui.sessions.create(viewer);
    let mut r = redirect("/decisions");
    r.headers_mut().insert(SET_COOKIE, ui.cookie(&id, Some(ui.settings.session_ttl.as_secs())));
    r
}

fn nonempty(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty() && v.len() <= 200)
}

async fn get(ui: &Arc<Ui>, s: &Session, path: &str, q: &HashMap<String, String>) -> Resp {
    let admin = s.viewer == Viewer::Admin;
    match path {
        "/decisions" => {
            let Some(store) = ui.store() else {
                return ui.message(s, StatusCode::SERVICE_UNAVAILABLE, "The decision history is not available.");
            };
            let query = Query {
                mailbox: s.viewer.mailbox().map(str::to_string),
                action: nonempty(q, "action"),
                rule: nonempty(q, "rule"),
                search: nonempty(q, "q"),
                before: q.get("before").and_then(|b| b.parse().ok()),
                limit: PAGE,
            };
            let q2 = query.clone();
            match blocking(move || store.decisions(&q2).map_err(|e| e.to_string())).await {
                Ok(rows) => {
                    ui.page(StatusCode::OK, "Decisions", s, pages::decisions(&rows, &query, &s.csrf, admin, PAGE))
                }
                Err(e) => ui.message(s, StatusCode::SERVICE_UNAVAILABLE, &e),
            }
        }
        "/decision" => {
            let Some((mb, seq, d)) = find_decision(ui, s, q).await else {
                return ui.message(
                    s,
                    StatusCode::NOT_FOUND,
                    "No such decision (it may have expired from the history).",
                );
            };
            let held = if d.action == "quarantine" { quarantined_of(ui, &mb, &d.uidl).await } else { None };
            let held = match held {
                Some(m) => {
                    let (qs, id) = (ui.quarantine.clone(), m.id.clone());
                    blocking(move || qs.original_exact(&id).map_err(|e| e.to_string()))
                        .await
                        .ok()
                        .map(|b| String::from_utf8_lossy(crate::mailfiles::header_block(&b)).into_owned())
                }
                None => None,
            };
            // The score breakdown: each fired rule as the current rule set describes it.
            let rules = ui.rules.current();
            let breakdown: Vec<pages::RuleLine> = d
                .rules
                .iter()
                .map(|id| {
                    let info = rules.rules().find(|r| r.id == id.as_str());
                    pages::RuleLine {
                        id: id.clone(),
                        score: info.as_ref().and_then(|r| r.score),
                        action: info.as_ref().and_then(|r| r.action).map(|a| a.as_str().to_string()),
                        describe: info.and_then(|r| r.describe.map(str::to_string)),
                    }
                })
                .collect();
            ui.page(StatusCode::OK, "Decision", s, pages::decision(seq, &d, &breakdown, held.as_deref(), &s.csrf))
        }
        "/quarantine" => match quarantine_of(ui, &s.viewer).await {
            Ok(items) => ui.page(StatusCode::OK, "Quarantine", s, pages::quarantine(&items, &s.csrf)),
            Err(e) => ui.message(s, StatusCode::SERVICE_UNAVAILABLE, &e),
        },
        "/quarantine/view" => {
            let Some(m) = quarantined_by_id(ui, &s.viewer, q.get("id").map(String::as_str).unwrap_or("")).await else {
                return ui.message(
                    s,
                    StatusCode::NOT_FOUND,
                    "No such message in your quarantine (it may have been released or deleted).",
                );
            };
            let (qs, id) = (ui.quarantine.clone(), m.id.clone());
            match blocking(move || qs.original_exact(&id).map_err(|e| e.to_string())).await {
                Ok(b) => ui.page(
                    StatusCode::OK,
                    "Quarantined message",
                    s,
                    pages::quarantined(&m, &String::from_utf8_lossy(&b), &s.csrf),
                ),
                Err(e) => ui.message(s, StatusCode::NOT_FOUND, &e),
            }
        }
        "/stats" => {
            let mb = s.viewer.mailbox().map(str::to_string);
            let counts = match ui.store() {
                Some(store) => {
                    blocking(move || store.rule_counts(mb.as_deref(), history::now_secs()).map_err(|e| e.to_string()))
                        .await
                        .unwrap_or_default()
                }
                None => Vec::new(),
            };
            let (dir, model_store) = (ui.config.state_dir.clone(), ui.config.store.clone());
            let trained = blocking(move || {
                if model_store.redis.is_some() {
                    // The shared model (Redis): its counts from one load.
                    let store = crate::store::redis_model::open_for_reading(&dir, &model_store, Duration::from_secs(2))
                        .map_err(|e| e.to_string())?;
                    return store
                        .map(|s| s.load().map(|m| (m.nspam(), m.nham(), m.token_count() as u64)))
                        .transpose()
                        .map_err(|e| e.to_string());
                }
                let store = crate::classify::store::RedbStore::open_existing(&dir, Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                store
                    .map(|s| s.stats().map(|(ns, nh, _, tokens, _)| (ns, nh, tokens)).map_err(|e| e.to_string()))
                    .transpose()
            })
            .await
            .ok()
            .flatten();
            ui.page(StatusCode::OK, "Statistics", s, pages::stats(&counts, trained))
        }
        _ => ui.message(s, StatusCode::NOT_FOUND, "No such page."),
    }
}

async fn find_decision(ui: &Arc<Ui>, s: &Session, f: &HashMap<String, String>) -> Option<(String, u64, Decision)> {
    let mb = f.get("mb")?.clone();
    let seq: u64 = f.get("seq")?.parse().ok()?;
    if !s.viewer.may_see(&mb) {
        return None;
    }
    let store = ui.store()?;
    let m = mb.clone();
    let d = blocking(move || store.decision(&m, seq).map_err(|e| e.to_string())).await.ok()??;
    Some((mb, seq, d))
}

/// The quarantine messages this viewer may see.
async fn quarantine_of(ui: &Arc<Ui>, viewer: &Viewer) -> Result<Vec<Listed>, String> {
    let qs = ui.quarantine.clone();
    // A mailbox is a user at one server: the same name at another server is someone else.
    let mailbox = match viewer {
        Viewer::Owner { user, upstream, .. } => Some((user.clone(), upstream.clone())),
        Viewer::Admin => None,
    };
    let mut items = blocking(move || {
        match mailbox {
            Some((user, upstream)) => qs.list_mailbox(&user, &upstream),
            None => qs.list(),
        }
        .map_err(|e| e.to_string())
    })
    .await?;
    items.reverse();
    Ok(items)
}

/// The quarantined message `id`, if this viewer may see it. Reads that one message, not the
/// whole quarantine.
async fn quarantined_by_id(ui: &Arc<Ui>, viewer: &Viewer, id: &str) -> Option<Listed> {
    // An id is a file name (the forms carry whole ids): nothing that could walk the tree.
    if id.is_empty() || id.len() > 255 || id.contains(['/', '\\']) || id.starts_with('.') {
        return None;
    }
    let (qs, i) = (ui.quarantine.clone(), id.to_string());
    let m = blocking(move || qs.listed(&i).map_err(|e| e.to_string())).await.ok()?;
    // Exact ids only: the id goes on into a release record and the "released" guard of
    // delete, which compare and serve whole ids; a prefix would name another message.
    if m.id != id {
        return None;
    }
    match viewer {
        Viewer::Owner { user, upstream, .. } if &m.user != user || &m.upstream != upstream => None,
        _ => Some(m),
    }
}

async fn quarantined_of(ui: &Arc<Ui>, mailbox: &str, uidl: &str) -> Option<Listed> {
    let (user, upstream) = history::split_mailbox(mailbox);
    let (qs, user, upstream) = (ui.quarantine.clone(), user.to_string(), upstream.to_string());
    let items = blocking(move || qs.list_mailbox(&user, &upstream).map_err(|e| e.to_string())).await.ok()?;
    items.into_iter().rev().find(|m| m.uidl == uidl)
}

/// Trains one message (or recorded header block) with a label, in the proxy's classifier
/// store; the sessions' model handle picks the change up at its next poll.
async fn train(ui: &Arc<Ui>, msg: Vec<u8>, spam: bool) -> Result<crate::classify::train::Outcome, String> {
    let (dir, settings, rules) = (ui.config.state_dir.clone(), ui.config.bayes.clone(), ui.rules.current());
    let model_store = ui.config.store.clone();
    blocking(move || {
        // The configured model store: Redis with `store.backend: redis`, else the redb file.
        let store = crate::store::redis_model::open_for_writing(&dir, &model_store).map_err(|e| e.to_string())?;
        let tokenizer = crate::classify::Tokenizer::new(settings.ignore_headers.iter().map(String::as_str));
        let mut trainer =
            crate::classify::train::Trainer::new(&*store, tokenizer, Some(rules)).map_err(|e| e.to_string())?;
        let o = trainer.train(&msg, spam);
        trainer.commit().map_err(|e| e.to_string())?;
        Ok(o)
    })
    .await
}

fn trained_text(r: &Result<crate::classify::train::Outcome, String>, label: &str) -> String {
    match r {
        Ok(_) => format!("Trained as {label}."),
        Err(e) => format!("Not trained as {label}: {e}"),
    }
}

async fn post(ui: &Arc<Ui>, s: &Session, cookie: &str, path: &str, f: &HashMap<String, String>) -> Resp {
    let resp = post_action(ui, s, cookie, path, f).await;
    // "Not spam" with "add sender to my allowlist" ticked: only once the message itself was
    // put right (a 2xx), the sender joins the mailbox's allowlist.
    if matches!(path, "/notspam" | "/release") && f.get("allow").is_some_and(|v| !v.is_empty()) {
        if !resp.status().is_success() {
            return resp;
        }
        let Some((user, upstream, from)) = sender_of(ui, s, path, f).await else { return resp };
        let (ok, text) = allow_sender(ui, &user, &upstream, &from).await;
        return append_notice(resp, &text, ok).await;
    }
    resp
}

/// The mailbox (user, upstream) and the From of the message a "Not spam" form names.
async fn sender_of(
    ui: &Arc<Ui>,
    s: &Session,
    path: &str,
    f: &HashMap<String, String>,
) -> Option<(String, String, String)> {
    if path == "/release" {
        // The copy is gone from the quarantine by now only if the release failed.
        let id = f.get("id")?;
        let m = released_copy(ui, s, id).await?;
        return Some((m.user, m.upstream, m.from));
    }
    let (mb, _, d) = find_decision(ui, s, f).await?;
    let (user, upstream) = history::split_mailbox(&mb);
    Some((user.to_string(), upstream.to_string(), d.from))
}

/// The quarantined message `id` of this viewer (still listed after a release).
async fn released_copy(ui: &Arc<Ui>, s: &Session, id: &str) -> Option<Listed> {
    quarantined_by_id(ui, &s.viewer, id).await
}

/// Adds the address in `from` to the allowlist of `user` at `upstream` (`host:port`);
/// returns the sentence for the page.
async fn allow_sender(ui: &Arc<Ui>, user: &str, upstream: &str, from: &str) -> (bool, String) {
    let Some(settings) = ui.config.rules_per_user.clone() else {
        return (
            false,
            "The sender was not added to an allowlist: this server has no per-mailbox rules (rules_per_user is off)."
                .into(),
        );
    };
    let addr = crate::rules::header::parse_addresses(from).into_iter().map(|m| m.addr).find(|a| !a.is_empty());
    let Some(addr) = addr else {
        return (false, format!("The sender was not added to your allowlist: {from:?} holds no address."));
    };
    // The per-mailbox directory is named by the upstream host, as the sessions name it.
    let host = ui
        .config
        .listeners
        .iter()
        .filter_map(|l| l.upstream.as_ref())
        .find(|u| u.display() == upstream)
        .map(|u| u.host.clone())
        .unwrap_or_else(|| upstream.rsplit_once(':').map_or(upstream, |(h, _)| h).to_string());
    let (user, a) = (user.to_string(), addr.clone());
    let r = blocking(move || {
        crate::rules::users::allowlist_add(&settings, &user, &host, &a).map_err(|e| match e {
            crate::rules::users::AllowlistError::Io { .. } => {
                tracing::warn!(error = %e, "review page: allowlist not written");
                "the allowlist could not be written (see the log)".to_string()
            }
            e => e.to_string(),
        })
    })
    .await;
    match r {
        Ok(true) => (true, format!("{addr} is on your allowlist: from your next login, its mail is never filtered.")),
        Ok(false) => (true, format!("{addr} was already on your allowlist.")),
        Err(e) => (false, format!("The sender was not added to your allowlist: {e}.")),
    }
}

/// `resp` (a message page, its body in memory) with one more notice at the end of `main`.
async fn append_notice(resp: Resp, text: &str, ok: bool) -> Resp {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let page = String::from_utf8_lossy(&bytes);
    let notice = pages::notice(text, ok).into_string();
    let page = match page.rfind("</main>") {
        Some(i) => format!("{}{notice}{}", &page[..i], &page[i..]),
        None => format!("{page}{notice}"),
    };
    Response::from_parts(parts, Full::new(Bytes::from(page)))
}

async fn post_action(ui: &Arc<Ui>, s: &Session, cookie: &str, path: &str, f: &HashMap<String, String>) -> Resp {
    match path {
        "/logout" => {
            ui.sessions.remove(cookie);
            let mut r = redirect("/login");
            r.headers_mut().insert(SET_COOKIE, ui.cookie("", None));
            r
        }
        "/spam" => {
            let Some((_, _, d)) = find_decision(ui, s, f).await else {
                return ui.message(
                    s,
                    StatusCode::NOT_FOUND,
                    "No such decision (it may have expired from the history): nothing was changed.",
                );
            };
            let r = train(ui, d.header_block(), true).await;
            let status = if r.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            ui.message(s, status, &format!("{:?} from {:?}: {}", d.subject, d.from, trained_text(&r, "spam")))
        }
        "/notspam" => {
            let Some((mb, _, d)) = find_decision(ui, s, f).await else {
                return ui.message(
                    s,
                    StatusCode::NOT_FOUND,
                    "No such decision (it may have expired from the history): nothing was changed.",
                );
            };
            if d.action == "quarantine" && d.disposition == "condemned" {
                return match quarantined_of(ui, &mb, &d.uidl).await {
                    Some(m) => release(ui, s, &mb, &m).await,
                    None => ui.message(
                        s,
                        StatusCode::NOT_FOUND,
                        "This message is no longer in the quarantine (released or deleted already).",
                    ),
                };
            }
            let mut done = String::new();
            if d.action == "delete" && d.disposition == "condemned" {
                let r = train(ui, d.header_block(), false).await;
                let text = format!(
                    "{:?} from {:?} was deleted from the server (action delete): it cannot be brought back. {}",
                    d.subject,
                    d.from,
                    trained_text(&r, "not spam")
                );
                return ui.message(s, StatusCode::OK, &text);
            }
            if d.disposition != "visible" {
                let Some(store) = ui.store() else {
                    return ui.message(s, StatusCode::SERVICE_UNAVAILABLE, "The decision history is not available.");
                };
                let (m, u) = (mb.clone(), d.uidl.clone());
                if let Err(e) =
                    blocking(move || store.show(&m, &u, history::now_secs()).map_err(|e| e.to_string())).await
                {
                    return ui.message(s, StatusCode::SERVICE_UNAVAILABLE, &format!("Nothing was changed: {e}"));
                }
                done.push_str("It will be in your mailbox from your next login. ");
            }
            let r = train(ui, d.header_block(), false).await;
            done.push_str(&trained_text(&r, "not spam"));
            ui.message(s, StatusCode::OK, &format!("{:?} from {:?}: {done}", d.subject, d.from))
        }
        "/release" => {
            let Some(m) = quarantined_by_id(ui, &s.viewer, f.get("id").map(String::as_str).unwrap_or("")).await else {
                return ui.message(
                    s,
                    StatusCode::NOT_FOUND,
                    "No such message in your quarantine (released or deleted already): nothing was changed.",
                );
            };
            let mb = match &s.viewer {
                Viewer::Owner { mailbox, .. } => mailbox.clone(),
                Viewer::Admin if m.upstream.is_empty() || m.user.is_empty() => {
                    return ui.message(
                        s,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "This copy does not say which mailbox it came from: nothing was changed.",
                    );
                }
                Viewer::Admin => history::mailbox_key(&m.upstream, &m.user),
            };
            release(ui, s, &mb, &m).await
        }
        "/quarantine/delete" => {
            let Some(m) = quarantined_by_id(ui, &s.viewer, f.get("id").map(String::as_str).unwrap_or("")).await else {
                return ui.message(
                    s,
                    StatusCode::NOT_FOUND,
                    "No such message in your quarantine (released or deleted already): nothing was changed.",
                );
            };
            // A released message is served from this very copy: deleting it would take the
            // message out of its owner's mailbox behind their back.
            if let Some(store) = ui.store() {
                let (mb, id) = (history::mailbox_key(&m.upstream, &m.user), m.id.clone());
                let released = blocking(move || {
                    store.released(&mb).map(|r| r.iter().any(|r| r.quarantine_id == id)).map_err(|e| e.to_string())
                })
                .await;
                match released {
                    Ok(false) => {}
                    Ok(true) => {
                        return ui.message(
                            s,
                            StatusCode::CONFLICT,
                            "This message was released into the mailbox; it leaves the quarantine when the mail client deletes it. Nothing was changed.",
                        )
                    }
                    Err(e) => return ui.message(s, StatusCode::SERVICE_UNAVAILABLE, &format!("Not deleted: {e}")),
                }
            }
            let (qs, id) = (ui.quarantine.clone(), m.id.clone());
            match blocking(move || qs.remove_exact(&id).map_err(|e| e.to_string())).await {
                Ok(()) => ui.message(s, StatusCode::OK, &format!("{:?} was deleted for good.", m.subject)),
                Err(e) => ui.message(s, StatusCode::SERVICE_UNAVAILABLE, &format!("Not deleted: {e}")),
            }
        }
        _ => ui.message(s, StatusCode::NOT_FOUND, "No such action: nothing was changed."),
    }
}

/// The UIDL a released message gets: `popsift-r-` and the first 32 hex digits of the SHA-256
/// of its bytes (stable across logins; the `popsift-r-` prefix keeps it apart from the
/// server's UIDLs, and the session drops a release whose UIDL the server itself lists).
pub fn release_uidl(msg: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, msg);
    let hex = crate::hex::lower(d.as_ref().get(..16).unwrap_or(d.as_ref()));
    format!("popsift-r-{hex}")
}

/// "Not spam" on a quarantined message: from the next login it is in the mailbox again,
/// served from the quarantine; it is trained as ham.
async fn release(ui: &Arc<Ui>, s: &Session, mailbox: &str, m: &Listed) -> Resp {
    let Some(store) = ui.store() else {
        return ui.message(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "The decision history is not available: nothing was changed.",
        );
    };
    let (qs, id) = (ui.quarantine.clone(), m.id.clone());
    let original = match blocking(move || qs.original_exact(&id).map_err(|e| e.to_string())).await {
        Ok(b) => b,
        Err(e) => return ui.message(s, StatusCode::NOT_FOUND, &format!("Nothing was changed: {e}")),
    };
    let r = Released {
        uidl: release_uidl(&original),
        quarantine_id: m.id.clone(),
        size: original.len() as u64,
        time: history::now_secs(),
    };
    let mb = mailbox.to_string();
    if let Err(e) = blocking(move || store.release(&mb, &r).map_err(|e| e.to_string())).await {
        return ui.message(s, StatusCode::SERVICE_UNAVAILABLE, &format!("Nothing was changed: {e}"));
    }
    let trained = if ui.config.bayes.train_restored {
        trained_text(&train(ui, original, false).await, "not spam")
    } else {
        String::new()
    };
    ui.message(
        s,
        StatusCode::OK,
        &format!("{:?} is released: your mail program will fetch it at its next check. {trained}", m.subject),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip() {
        let e = form_encode(&[("a b", "x&y=z"), ("u", "é<")]);
        let d = form_decode(&e);
        assert_eq!(d["a b"], "x&y=z");
        assert_eq!(d["u"], "é<");
        assert_eq!(form_decode("x=1+2%2B%zz")["x"], "1 2+%zz");
    }

    #[test]
    fn release_uidls_are_stable_and_prefixed() {
        let a = release_uidl(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(a, release_uidl(b"Subject: x\r\n\r\nbody\r\n"));
        assert!(a.starts_with("popsift-r-") && a.len() == 42, "{a}");
        // RFC 1939 §7: a UIDL is 1 to 70 characters in 0x21..=0x7E.
        assert!(a.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }

    fn ui_for(yaml: &str) -> Result<Ui, crate::config::ConfigError> {
        let file = crate::config::ConfigFile::parse(yaml, std::path::Path::new("p.yaml"))?;
        let config = Arc::new(Config::build(file, crate::config::Overrides::default())?);
        Ok(Ui {
            settings: config.ui.clone().expect("ui configured"),
            sessions: Sessions::new(Duration::from_secs(60)),
            history: None,
            quarantine: Quarantine::new(&config.quarantine.dir),
            rules: RulesHandle::new(crate::rules::RuleSet::empty()),
            secure: false,
            config,
        })
    }

    const TWO: &str = "listeners:\n  - listen: 127.0.0.1:1110\n    upstream: a.example:110\n  - listen: 127.0.0.1:1111\n    upstream: b.example:995\n  - listen: 127.0.0.1:1112\n    upstream: a.example:110\nui:\n  listen: 127.0.0.1:8080\n";

    #[test]
    fn several_upstreams_offer_a_checked_choice() {
        let ui = ui_for(TWO).unwrap();
        assert_eq!(ui.servers(), ["a.example:110", "b.example:995"], "each upstream once, in order");
        assert_eq!(ui.login_listener(Some("b.example:995")).unwrap().upstream.as_ref().unwrap().host, "b.example");
        // Only a configured server, never one the form names.
        assert!(ui.login_listener(Some("evil.example:110")).is_err());
        assert!(ui.login_listener(None).is_err());
        let form = pages::login(None, "t", &ui.servers()).into_string();
        assert!(form.contains("<select name=\"server\"") && form.contains(">b.example:995</option>"), "{form}");
        // `ui.upstream` pins one: no list, the form's field is not needed.
        let ui = ui_for(&format!("{TWO}  upstream: b.example:995\n")).unwrap();
        assert_eq!(ui.servers(), ["b.example:995"]);
        assert_eq!(ui.login_listener(None).unwrap().upstream.as_ref().unwrap().host, "b.example");
        assert!(!pages::login(None, "t", &ui.servers()).into_string().contains("<select"));
        // A `ui.upstream` no listener has is a config error naming the field.
        let e = ui_for(&format!("{TWO}  upstream: c.example:110\n")).err().unwrap().to_string();
        assert!(e.contains("ui.upstream") && e.contains("a.example:110"), "{e}");
        // The login timeout stays below the connection limit.
        let e = ui_for(&format!("{TWO}  login_timeout: 5m\n")).err().unwrap().to_string();
        assert!(e.contains("ui.login_timeout"), "{e}");
        assert_eq!(ui_for(TWO).unwrap().settings.login_timeout, auth::LOGIN_CHECK_TIMEOUT);
    }

    #[test]
    fn detail_shows_matched_text_and_clues_escaped() {
        let d = Decision {
            mailbox: "u\u{1f}h:110".into(),
            rules: vec!["R1".into()],
            bayes: Some(0.97),
            matched: vec![crate::rules::explain::Matched {
                rule: "R1".into(),
                header: "subject".into(),
                before: "a <b> ".into(),
                found: "<i>x</i>".into(),
                after: " c".into(),
            }],
            clues: vec![crate::classify::explain::Clue { token: "<tok>".into(), probability: 0.99, spam: 7, ham: 0 }],
            ..Decision::default()
        };
        let lines = [pages::RuleLine { id: "R1".into(), score: Some(2.0), action: None, describe: Some("<d>".into()) }];
        let page = pages::decision(1, &d, &lines, None, "tok").into_string();
        assert!(page.contains("subject: </span>a &lt;b&gt; <mark>&lt;i&gt;x&lt;/i&gt;</mark> c"), "{page}");
        assert!(page.contains("&lt;tok&gt;") && page.contains("0.990") && !page.contains("<tok>"), "{page}");
        assert!(!page.contains("<i>") && !page.contains("<d>"));
    }

    #[test]
    fn subjects_are_escaped() {
        let d = Decision {
            subject: "<script>alert(1)</script>".into(),
            mailbox: "u\u{1f}h:110".into(),
            ..Decision::default()
        };
        let page = pages::decisions(&[(1, d)], &Query::default(), "tok", false, PAGE).into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains(">Not spam</button>") && page.contains(">Spam</button>"));
    }
}
