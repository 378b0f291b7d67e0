//! Who is looking at the review page: sessions, CSRF tokens, the login rate limit, and the
//! two ways to log in.
//!
//! - A mailbox owner logs in with the mailbox's own user name and password, checked by a
//!   POP3 login (RFC 1939 §7 USER/PASS) to the upstream exactly as the proxy connects to it
//!   (same TLS mode, same timeouts), then QUIT at once (AUTHORIZATION state: RFC 1939 §6
//!   says nothing is changed). The password is never stored and never logged; the session
//!   remembers only the mailbox.
//! - The admin (user name `admin`, only when `ui.admin_password_hash` is set) is checked
//!   against that argon2 hash and sees every mailbox.
//!
//! Sessions are random 256-bit tokens in an `HttpOnly; SameSite=Strict` cookie (`Secure`
//! under TLS), held in memory and expiring after `ui.session_ttl`. Each session has its own
//! CSRF token, embedded in every form and checked on every POST. Login attempts are limited
//! per client address ([`LOGIN_ATTEMPTS`] per [`LOGIN_WINDOW`]).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{Config, Listener};
use crate::net::conn::Conn;
use crate::net::error::Phase;
use crate::net::stream::Stream;
use crate::pop3::status::{Status, MAX_STATUS_LINE};

/// Default for `ui.login_timeout`: the whole POP3 login check of the form, at most. Well
/// below the UI's connection limit ([`crate::ui::LIMITS`]), so a slow mail server is
/// answered with a clear page instead of a connection closed mid-request.
pub const LOGIN_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Login attempts allowed per client address per [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: usize = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Most sessions held at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 10_000;
/// Client addresses remembered by the login rate limit.
const MAX_ATTEMPT_ADDRESSES: usize = 100_000;
/// The admin's user name on the login form.
pub const ADMIN_USER: &str = "admin";

/// Whose view a session has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// One mailbox: its [`crate::store::history::mailbox_key`], user name and upstream.
    Owner {
        mailbox: String,
        user: String,
        upstream: String,
    },
    Admin,
}

impl Viewer {
    /// Whether this viewer may see `mailbox`.
    pub fn may_see(&self, mailbox: &str) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::Owner { mailbox: m, .. } => m == mailbox,
        }
    }

    /// The one mailbox this viewer is limited to (`None` for the admin).
    pub fn mailbox(&self) -> Option<&str> {
        match self {
            Viewer::Admin => None,
            Viewer::Owner { mailbox, .. } => Some(mailbox),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub viewer: Viewer,
    pub csrf: String,
    expires: Instant,
}

/// Sessions and the login rate limit.
pub struct Sessions {
    ttl: Duration,
    rng: SystemRandom,
    map: Mutex<HashMap<String, Session>>,
    attempts: Mutex<crate::edge::limits::Recent<IpAddr, Vec<Instant>>>,
}

/// 32 random bytes, URL-safe base64.
fn token(rng: &SystemRandom) -> String {
    let mut b = [0u8; 32];
    // SystemRandom fails only when the OS has no randomness at all; an empty-looking token
    // would be guessable, so refuse to go on.
    rng.fill(&mut b).expect("the operating system's random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Compares in time independent of where the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            rng: SystemRandom::new(),
            map: Mutex::default(),
            attempts: Mutex::new(crate::edge::limits::Recent::new(MAX_ATTEMPT_ADDRESSES)),
        }
    }

    /// A random token for the login form (see `LOGIN_COOKIE` in [`crate::ui`]).
    pub fn login_token(&self) -> String {
        token(&self.rng)
    }

    /// A new session for `viewer`: (cookie token, session).
    pub fn create(&self, viewer: Viewer) -> (String, Session) {
        let id = token(&self.rng);
        let s = Session { viewer, csrf: token(&self.rng), expires: Instant::now() + self.ttl };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session for a cookie token.
    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Counts a login attempt from `ip`; `false` when it is over the limit (not attempted).
    pub fn allow_attempt(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: the address that tried least recently is forgotten first (amortised O(1)).
        let v = map.touch(ip, Vec::new);
        v.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
        if v.len() >= LOGIN_ATTEMPTS {
            return false;
        }
        v.push(now);
        true
    }
}

/// Why a login failed (the page says only "wrong user name or password" for `Refused`).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Refused,
    #[error("the mail server could not be reached: {0}")]
    Upstream(String),
}

/// Checks `user`/`password` by a POP3 login to `listener`'s upstream. Never logs either.
/// On a listener with `upstream_from_user`, `user` is `HOST:USER` as in a mail client,
/// checked by the same rules (allow list, internal addresses) before any connection.
/// Returns the mailbox's upstream (`HOST:PORT`) and user name at that server.
pub async fn pop3_login(
    config: &Config,
    listener: &Listener,
    user: &str,
    password: &str,
) -> Result<(String, String), LoginError> {
    if user.is_empty() || password.is_empty() || user.len() > 255 || password.len() > 255 {
        return Err(LoginError::Refused);
    }
    // A CR, LF or NUL would let a form field add POP3 commands.
    if user.bytes().chain(password.bytes()).any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(LoginError::Refused);
    }
    let t = config.timeouts;
    let tls =
        crate::net::tls::client_config(listener.upstream_ca()).map_err(|e| LoginError::Upstream(e.to_string()))?;
    let (target, user, up) = match (&listener.upstream_from_user, &listener.upstream) {
        (Some(from_user), _) => {
            use crate::session::upstream_from_user::UpstreamFromUser;
            let route = from_user.route(user).map_err(|_| LoginError::Refused)?;
            let (host, port) = (route.upstream.host.clone(), route.upstream.port);
            let addrs: Vec<_> = tokio::time::timeout(t.connect, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| LoginError::Upstream("name lookup timed out".into()))?
                .map_err(|e| LoginError::Upstream(e.to_string()))?
                .collect();
            UpstreamFromUser::addresses_allowed(&route, &addrs).map_err(|_| LoginError::Refused)?;
            let up = crate::net::upstream::connect_to(&route.upstream, &addrs, &tls, &t).await;
            (route.upstream, route.user, up)
        }
        (None, Some(u)) => (u.clone(), user.to_string(), crate::net::upstream::connect(u, &tls, &t).await),
        (None, None) => return Err(LoginError::Upstream("no mail server configured".into())),
    };
    let up = up.map_err(|e| LoginError::Upstream(e.to_string()))?;
    let mut conn = up.conn;
    let ok = ask(&mut conn, format!("USER {user}\r\n").as_bytes(), &t).await?
        && ask(&mut conn, format!("PASS {password}\r\n").as_bytes(), &t).await?;
    // QUIT in AUTHORIZATION or TRANSACTION with no DELE changes nothing (RFC 1939 §6).
    let _ = ask(&mut conn, b"QUIT\r\n", &t).await;
    if ok {
        Ok((target.display(), user))
    } else {
        Err(LoginError::Refused)
    }
}

/// Sends one command line, reads its status line: `true` for `+OK`.
async fn ask(conn: &mut Conn<Stream>, line: &[u8], t: &crate::config::Timeouts) -> Result<bool, LoginError> {
    conn.write_all(line, t.upstream_reply, Phase::Login).await.map_err(|e| LoginError::Upstream(e.to_string()))?;
    let r = conn
        .read_line(MAX_STATUS_LINE, t.upstream_reply, Phase::Login)
        .await
        .map_err(|e| LoginError::Upstream(e.to_string()))?;
    Ok(Status::parse(&r).is_some_and(|s| s.is_ok()))
}

/// Checks the admin password against the configured argon2 hash (CPU-heavy: run it on the
/// blocking pool).
pub fn admin_ok(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// An argon2id hash of `password` with a random salt, for `ui.admin_password_hash`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    SystemRandom::new().fill(&mut salt).map_err(|_| "no randomness from the operating system".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_address() {
        let s = Sessions::new(Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(s.allow_attempt(a));
        }
        assert!(!s.allow_attempt(a));
        assert!(s.allow_attempt(b));
    }

    #[test]
    fn rate_limit_table_stays_bounded_under_a_flood_of_addresses() {
        let s = Sessions::new(Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(s.allow_attempt(a));
        }
        for i in 0..(MAX_ATTEMPT_ADDRESSES as u32 + 1_000) {
            assert!(s.allow_attempt(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        assert_eq!(s.attempts.lock().unwrap().len(), MAX_ATTEMPT_ADDRESSES);
        assert!(s.allow_attempt(a), "the least recent address was forgotten (bounded memory)");
    }

    #[test]
    fn sessions_expire_and_are_removed() {
        let s = Sessions::new(Duration::from_millis(0));
        let (id, _) = s.create(Viewer::Admin);
        assert!(s.get(&id).is_none(), "ttl 0 expires at once");
        let s = Sessions::new(Duration::from_secs(60));
        let (id, sess) = s.create(Viewer::Admin);
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        assert_ne!(id, sess.csrf);
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn admin_hash_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(admin_ok(&h, "correct horse"));
        assert!(!admin_ok(&h, "wrong"));
        assert!(!admin_ok("not a hash", "x"));
    }
}
