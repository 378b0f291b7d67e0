//! Client commands (RFC 1939 §§4–7; CAPA from RFC 2449 §5; STLS from RFC 2595 §4;
//! AUTH from RFC 5034 §4; UTF8 from RFC 6856).
//!
//! Keywords are case-insensitive (RFC 1939 §3). Arguments are separated by single spaces,
//! but we accept runs of spaces, as servers do. PASS takes the rest of the line verbatim,
//! spaces included (RFC 1939 §7: "the server may treat spaces in the argument as part of the
//! password"). Secrets are wrapped in [`Secret`], whose `Debug` never shows them.
use std::fmt;

/// Longest command line accepted from a client, excluding CRLF. RFC 2449 §4 limits commands
/// to 255 octets, but SASL initial responses and continuation lines (XOAUTH2, OAUTHBEARER
/// tokens) are routinely longer, so the cap is generous and applies to those lines too.
pub const MAX_COMMAND_LINE: usize = 16 * 1024;

/// A credential or SASL payload. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
    /// The secret bytes, for relaying only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(Secret),
    Apop {
        name: String,
        digest: Secret,
    },
    /// `AUTH` alone (a non-standard mechanism listing some clients send) has no mechanism.
    Auth {
        mechanism: Option<String>,
        initial: Option<Secret>,
    },
    Capa,
    Stls,
    Utf8,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    Quit,
    Top {
        msg: u32,
        lines: u64,
    },
    Uidl(Option<u32>),
    /// A keyword popsift does not know; answered with `-ERR`, never relayed.
    Unknown(String),
}

impl Command {
    /// The keyword, upper-case, for logs and metrics. Never includes arguments.
    pub fn keyword(&self) -> &str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Auth { .. } => "AUTH",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Utf8 => "UTF8",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
            Command::Top { .. } => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Unknown(k) => k,
        }
    }

    /// Encodes the command as a wire line with CRLF.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }

    /// Appends the command as a wire line with CRLF to `out`. Allocates nothing when `out`
    /// has room (issue 16: RETR, TOP and NOOP are written straight into the buffer of
    /// commands going upstream; numbers are formatted in place, not through a `String`).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.keyword().as_bytes());
        match self {
            Command::User(name) => push_arg(out, name.as_bytes()),
            Command::Pass(s) => push_arg(out, s.expose()),
            Command::Apop { name, digest } => {
                push_arg(out, name.as_bytes());
                push_arg(out, digest.expose());
            }
            Command::Auth { mechanism, initial } => {
                if let Some(m) = mechanism {
                    push_arg(out, m.as_bytes());
                }
                if let Some(i) = initial {
                    push_arg(out, i.expose());
                }
            }
            Command::List(Some(n)) | Command::Uidl(Some(n)) | Command::Retr(n) | Command::Dele(n) => {
                push_number(out, u64::from(*n));
            }
            Command::Top { msg, lines } => {
                push_number(out, u64::from(*msg));
                push_number(out, *lines);
            }
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends ` N` in decimal. Not `write!`: the formatting machinery cost about a fifth of
/// `encode_into`'s instructions per RETR (issue 16, callgrind).
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.push(b' ');
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

fn push_arg(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b' ');
    out.extend_from_slice(arg);
}

/// Why a command line could not be parsed. The text is safe to send in `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("empty command")]
    Empty,
    #[error("{keyword}: missing argument")]
    MissingArgument { keyword: &'static str },
    #[error("{keyword}: too many arguments")]
    TooManyArguments { keyword: &'static str },
    #[error("{keyword}: invalid message number")]
    InvalidNumber { keyword: &'static str },
    #[error("command is not valid text")]
    NotText,
    /// A user name with NUL, CR, LF or another control byte (never relayed upstream: a
    /// server may cut the name there and log in a different mailbox than popsift keys by).
    #[error("{keyword}: user name holds control characters")]
    ControlBytes { keyword: &'static str },
}

/// True when `name` holds a control byte (C0, DEL) or is not what a server would match
/// byte for byte. User names are identities (the quarantine folder, the header cache and
/// the verdict memo are keyed by them), so such names are refused rather than relayed.
pub fn has_control_bytes(name: &[u8]) -> bool {
    name.iter().any(|&b| b < 0x20 || b == 0x7F)
}

/// The identity carried by a SASL exchange (RFC 5034), as far as popsift can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslIdentity {
    /// The mailbox name the login is for.
    Known(String),
    /// A mechanism popsift does not read (SCRAM, XOAUTH2, …): no identity.
    Unknown,
    /// The identity holds control bytes or is not valid: refuse, do not relay.
    Invalid,
}

/// Reads the identity from the first client response of a SASL exchange (the initial
/// response of `AUTH mech resp`, or the first continuation line), base64 as RFC 5034 §4
/// sends it. PLAIN (RFC 4616 §2): `authzid NUL authcid NUL passwd`; the mailbox is the
/// authorization identity when given, else the authentication identity. LOGIN: the first
/// response is the user name. CRAM-MD5 (RFC 2195 §2): `user SP digest`. `=` is an empty
/// initial response (RFC 5034 §4) and `*` a cancellation: neither carries an identity.
/// Names are taken byte for byte (no case folding: whether `BOB` is `bob` is the server's
/// business; popsift keeps them apart, each with its own quota).
pub fn sasl_identity(mechanism: &str, response: &[u8]) -> SaslIdentity {
    use base64::Engine;
    if response == b"*" || response == b"=" || response.is_empty() {
        return SaslIdentity::Unknown;
    }
    let mech = mechanism.to_ascii_uppercase();
    if !matches!(mech.as_str(), "PLAIN" | "LOGIN" | "CRAM-MD5") {
        return SaslIdentity::Unknown;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(response) else {
        return SaslIdentity::Invalid;
    };
    let name: &[u8] = match mech.as_str() {
        "PLAIN" => {
            let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
            let [authzid, authcid, _passwd] = parts.as_slice() else { return SaslIdentity::Invalid };
            if authcid.is_empty() || has_control_bytes(authzid) {
                return SaslIdentity::Invalid;
            }
            if authzid.is_empty() {
                authcid
            } else {
                authzid
            }
        }
        "LOGIN" => &decoded,
        _ => match decoded.iter().rposition(|&b| b == b' ') {
            Some(p) => decoded.get(..p).unwrap_or_default(),
            None => return SaslIdentity::Invalid,
        },
    };
    if name.is_empty() || has_control_bytes(name) {
        return SaslIdentity::Invalid;
    }
    match String::from_utf8(name.to_vec()) {
        Ok(n) => SaslIdentity::Known(n),
        Err(_) => SaslIdentity::Invalid,
    }
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let (kw, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (line.get(..i).unwrap_or_default(), line.get(i + 1..).unwrap_or_default()),
        None => (line, &[][..]),
    };
    if kw.is_empty() {
        return Err(CommandError::Empty);
    }
    // Upper-cased on the stack (issue 16: no allocation per command); every keyword
    // popsift knows has four octets or three, a longer one is `Unknown` (and only then a
    // `String`). Compared as bytes: a keyword that is not text matches none of them and is
    // refused as `NotText` where `Unknown` is made (no UTF-8 check per command).
    let mut folded = [0u8; 4];
    let upper: &[u8] = match folded.get_mut(..kw.len()) {
        Some(f) => {
            f.copy_from_slice(kw);
            f.make_ascii_uppercase();
            f
        }
        None => b"",
    };
    // PASS and AUTH payloads are opaque bytes; everything else must be text.
    match upper {
        b"PASS" => {
            // RFC 1939 §7: the password is the rest of the line, spaces included.
            if rest.is_empty() {
                return Err(CommandError::MissingArgument { keyword: "PASS" });
            }
            return Ok(Command::Pass(Secret::new(rest)));
        }
        b"AUTH" => {
            let mut parts = rest.split(|&b| b == b' ').filter(|p| !p.is_empty());
            let mechanism = match parts.next() {
                Some(m) => Some(String::from_utf8(m.to_vec()).map_err(|_| CommandError::NotText)?),
                None => None,
            };
            let initial = parts.next().map(Secret::new);
            if parts.next().is_some() {
                return Err(CommandError::TooManyArguments { keyword: "AUTH" });
            }
            return Ok(Command::Auth { mechanism, initial });
        }
        b"APOP" => {
            let mut parts = rest.split(|&b| b == b' ').filter(|p| !p.is_empty());
            let name = parts.next().ok_or(CommandError::MissingArgument { keyword: "APOP" })?;
            let digest = parts.next().ok_or(CommandError::MissingArgument { keyword: "APOP" })?;
            if parts.next().is_some() {
                return Err(CommandError::TooManyArguments { keyword: "APOP" });
            }
            if has_control_bytes(name) {
                return Err(CommandError::ControlBytes { keyword: "APOP" });
            }
            let name = String::from_utf8(name.to_vec()).map_err(|_| CommandError::NotText)?;
            return Ok(Command::Apop { name, digest: Secret::new(digest) });
        }
        _ => {}
    }
    let rest = std::str::from_utf8(rest).map_err(|_| CommandError::NotText)?;
    // At most three arguments are kept (on the stack): every command takes two at most,
    // so a third is all "too many arguments" needs to see.
    let mut kept = [""; 3];
    let mut count = 0;
    for (slot, a) in kept.iter_mut().zip(rest.split(' ').filter(|a| !a.is_empty())) {
        *slot = a;
        count += 1;
    }
    let args = kept.get(..count).unwrap_or_default();
    let cmd = match upper {
        b"USER" => {
            // Some user names contain spaces; keep the rest of the line as the server would.
            let name = rest.trim_matches(' ');
            if name.is_empty() {
                return Err(CommandError::MissingArgument { keyword: "USER" });
            }
            if has_control_bytes(name.as_bytes()) {
                return Err(CommandError::ControlBytes { keyword: "USER" });
            }
            Command::User(name.to_string())
        }
        b"CAPA" => no_args(args, "CAPA", Command::Capa)?,
        b"STLS" => no_args(args, "STLS", Command::Stls)?,
        b"UTF8" => no_args(args, "UTF8", Command::Utf8)?,
        b"STAT" => no_args(args, "STAT", Command::Stat)?,
        b"NOOP" => no_args(args, "NOOP", Command::Noop)?,
        b"RSET" => no_args(args, "RSET", Command::Rset)?,
        b"QUIT" => no_args(args, "QUIT", Command::Quit)?,
        b"LIST" => Command::List(optional_number(args, "LIST")?),
        b"UIDL" => Command::Uidl(optional_number(args, "UIDL")?),
        b"RETR" => Command::Retr(required_number(args, "RETR")?),
        b"DELE" => Command::Dele(required_number(args, "DELE")?),
        b"TOP" => {
            let (msg, lines) = match args {
                [msg, lines] => (*msg, *lines),
                [] | [_] => return Err(CommandError::MissingArgument { keyword: "TOP" }),
                _ => return Err(CommandError::TooManyArguments { keyword: "TOP" }),
            };
            let msg = number(msg, "TOP")?;
            // RFC 1939 §7: a non-negative number of lines. Clients ask for huge values
            // (fetchmail: 99999999) to mean "everything"; saturate instead of failing.
            let lines = if lines.bytes().all(|b| b.is_ascii_digit()) && !lines.is_empty() {
                lines.parse::<u64>().unwrap_or(u64::MAX)
            } else {
                return Err(CommandError::InvalidNumber { keyword: "TOP" });
            };
            Command::Top { msg, lines }
        }
        _ => Command::Unknown(std::str::from_utf8(kw).map_err(|_| CommandError::NotText)?.to_ascii_uppercase()),
    };
    Ok(cmd)
}

fn no_args(args: &[&str], keyword: &'static str, cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::TooManyArguments { keyword })
    }
}

fn optional_number(args: &[&str], keyword: &'static str) -> Result<Option<u32>, CommandError> {
    match args {
        [] => Ok(None),
        [n] => number(n, keyword).map(Some),
        _ => Err(CommandError::TooManyArguments { keyword }),
    }
}

fn required_number(args: &[&str], keyword: &'static str) -> Result<u32, CommandError> {
    match args {
        [] => Err(CommandError::MissingArgument { keyword }),
        [n] => number(n, keyword),
        _ => Err(CommandError::TooManyArguments { keyword }),
    }
}

/// A message number: decimal digits only (no sign, no spaces), at most what fits in u32.
/// Zero parses; the mailbox view rejects it as "no such message" (RFC 1939 numbers start at 1).
fn number(s: &str, keyword: &'static str) -> Result<u32, CommandError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::InvalidNumber { keyword });
    }
    s.parse::<u32>().map_err(|_| CommandError::InvalidNumber { keyword })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(s.as_bytes())
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(p("stat"), Ok(Command::Stat));
        assert_eq!(p("Quit"), Ok(Command::Quit));
        assert_eq!(p("capa"), Ok(Command::Capa));
    }

    #[test]
    fn numbers() {
        assert_eq!(p("LIST"), Ok(Command::List(None)));
        assert_eq!(p("LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(p("RETR 12"), Ok(Command::Retr(12)));
        assert_eq!(p("TOP 1 0"), Ok(Command::Top { msg: 1, lines: 0 }));
        assert_eq!(p("TOP 1 99999999"), Ok(Command::Top { msg: 1, lines: 99_999_999 }));
        assert_eq!(p("TOP 1 999999999999999999999999"), Ok(Command::Top { msg: 1, lines: u64::MAX }));
        assert_eq!(p("RETR -1"), Err(CommandError::InvalidNumber { keyword: "RETR" }));
        assert_eq!(p("RETR x"), Err(CommandError::InvalidNumber { keyword: "RETR" }));
        assert_eq!(p("RETR 99999999999"), Err(CommandError::InvalidNumber { keyword: "RETR" }));
        assert_eq!(p("RETR"), Err(CommandError::MissingArgument { keyword: "RETR" }));
        assert_eq!(p("DELE 1 2"), Err(CommandError::TooManyArguments { keyword: "DELE" }));
        assert_eq!(p("TOP 1"), Err(CommandError::MissingArgument { keyword: "TOP" }));
        assert_eq!(p("STAT 1"), Err(CommandError::TooManyArguments { keyword: "STAT" }));
        // Arguments are kept on the stack, three at most: more is still "too many".
        assert_eq!(p("DELE 1 2 3 4 5"), Err(CommandError::TooManyArguments { keyword: "DELE" }));
        assert_eq!(p("TOP 1 2 3"), Err(CommandError::TooManyArguments { keyword: "TOP" }));
        assert_eq!(p("LIST 1  2 3 4"), Err(CommandError::TooManyArguments { keyword: "LIST" }));
        assert_eq!(p("retr   7  "), Ok(Command::Retr(7)));
        assert_eq!(p("TOP  2   0"), Ok(Command::Top { msg: 2, lines: 0 }));
    }

    #[test]
    fn keywords_of_any_length() {
        // Folded on the stack up to four octets; longer ones are unknown, upper-cased.
        assert_eq!(p("xtndxmit now"), Ok(Command::Unknown("XTNDXMIT".into())));
        assert_eq!(p("top"), Err(CommandError::MissingArgument { keyword: "TOP" }));
        assert_eq!(p("x"), Ok(Command::Unknown("X".into())));
        assert_eq!(p("STATS"), Ok(Command::Unknown("STATS".into())));
        assert_eq!(p("\u{e9}t"), Ok(Command::Unknown("\u{e9}T".into())));
    }

    #[test]
    fn encode_into_appends() {
        let mut out = b"RETR 1\r\n".to_vec();
        Command::Top { msg: 2, lines: 99_999_999 }.encode_into(&mut out);
        Command::Noop.encode_into(&mut out);
        assert_eq!(out, b"RETR 1\r\nTOP 2 99999999\r\nNOOP\r\n");
    }

    #[test]
    fn pass_keeps_spaces_and_is_redacted() {
        let c = p("PASS my secret pw").unwrap();
        assert_eq!(c, Command::Pass(Secret::new(&b"my secret pw"[..])));
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(c.encode(), b"PASS my secret pw\r\n");
    }

    #[test]
    fn auth_forms() {
        assert_eq!(p("AUTH"), Ok(Command::Auth { mechanism: None, initial: None }));
        assert_eq!(p("AUTH PLAIN"), Ok(Command::Auth { mechanism: Some("PLAIN".into()), initial: None }));
        let c = p("AUTH PLAIN AGFsaWNlAHNlY3JldA==").unwrap();
        assert!(matches!(&c, Command::Auth { initial: Some(_), .. }));
        assert!(!format!("{c:?}").contains("AGFs"));
        assert_eq!(c.encode(), b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    }

    #[test]
    fn control_bytes_in_user_names_are_refused() {
        for bad in [&b"USER bob\0x"[..], b"USER bob\rPASS x", b"USER a\x1b[2J", b"USER bob\x7f", b"APOP bo\x01b d"] {
            assert!(matches!(parse(bad), Err(CommandError::ControlBytes { .. })), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(p("USER bob smith"), Ok(Command::User("bob smith".into())));
    }

    #[test]
    fn sasl_identities() {
        use base64::Engine;
        let b = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s).into_bytes();
        let known = |s: &str| SaslIdentity::Known(s.into());
        assert_eq!(sasl_identity("PLAIN", &b(b"\0alice\0pw")), known("alice"));
        assert_eq!(sasl_identity("plain", &b(b"admin\0alice\0pw")), known("admin"));
        assert_eq!(sasl_identity("PLAIN", &b(b"\0al\nice\0pw")), SaslIdentity::Invalid);
        assert_eq!(sasl_identity("PLAIN", &b(b"\0alice")), SaslIdentity::Invalid);
        assert_eq!(sasl_identity("PLAIN", b"!!not base64"), SaslIdentity::Invalid);
        assert_eq!(sasl_identity("LOGIN", &b(b"bob")), known("bob"));
        assert_eq!(sasl_identity("LOGIN", &b(b"bob\0x")), SaslIdentity::Invalid);
        assert_eq!(sasl_identity("CRAM-MD5", &b(b"tim b913a602c7eda7a495b4e6e7334d3890")), known("tim"));
        assert_eq!(sasl_identity("XOAUTH2", &b(b"user=x")), SaslIdentity::Unknown);
        assert_eq!(sasl_identity("PLAIN", b"*"), SaslIdentity::Unknown);
        assert_eq!(sasl_identity("PLAIN", b"="), SaslIdentity::Unknown);
    }

    #[test]
    fn apop() {
        let c = p("APOP mrose c4c9334bac560ecc979e58001b3e22fb").unwrap();
        assert!(matches!(&c, Command::Apop { name, .. } if name == "mrose"));
        assert_eq!(c.encode(), b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n");
        assert_eq!(p("APOP mrose"), Err(CommandError::MissingArgument { keyword: "APOP" }));
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(p("XTND XMIT"), Ok(Command::Unknown("XTND".into())));
        assert_eq!(p(""), Err(CommandError::Empty));
        assert_eq!(p(" STAT"), Err(CommandError::Empty));
        assert_eq!(parse(b"\xff\xfe"), Err(CommandError::NotText));
    }

    /// The hand-written decimal of `encode_into` against `to_string`, at the edges.
    #[test]
    fn numbers_encode_as_decimal() {
        for n in [0, 1, 9, 10, 99, 100, 65_535, 4_294_967_295u64, 10_000_000_000, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            push_number(&mut out, n);
            assert_eq!(out, format!(" {n}").into_bytes());
        }
        assert_eq!(Command::Retr(u32::MAX).encode(), b"RETR 4294967295\r\n");
        assert_eq!(Command::Top { msg: 0, lines: u64::MAX }.encode(), b"TOP 0 18446744073709551615\r\n");
    }

    #[test]
    fn encode_parse_round_trip() {
        for s in [
            "STAT", "LIST", "LIST 7", "UIDL 2", "RETR 1", "DELE 4", "TOP 3 10", "NOOP", "RSET", "QUIT", "CAPA",
            "USER bob",
        ] {
            let c = p(s).unwrap();
            let enc = c.encode();
            assert_eq!(&enc[..enc.len() - 2], s.as_bytes());
            assert_eq!(parse(&enc[..enc.len() - 2]).unwrap(), c);
        }
    }
}
