//! The PROXY protocol (HAProxy's spec, "The PROXY protocol, versions 1 & 2"): a load
//! balancer in front of popsift puts one header before the client's first byte, naming the
//! client's real address. popsift reads it from trusted sources only (`proxy_protocol:
//! {trusted: [CIDR…]}`); from there on logs, metrics, per-address limits and fail2ban lines
//! use the carried address.
//!
//! [`parse`] is pure and chunk-independent: it is given everything received so far and says
//! either "done, this many octets" or "incomplete, at least this many in all", never reading
//! ahead of the header. [`read_header`] feeds it from a socket reading exactly the octets it
//! asks for, so the bytes after the header (a TLS ClientHello, a POP3 command) stay in the
//! socket for whoever comes next, and no prefix buffer has to be carried along.
//!
//! Formats (spec §2.1, §2.2):
//! - v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN…\r\n`, at most 107
//!   octets with the CRLF.
//! - v2: the 12-octet signature `\r\n\r\n\0\r\nQUIT\n`, version/command, family/transport,
//!   a 16-bit length, the addresses (12 octets for TCP over IPv4, 36 for IPv6), then TLVs,
//!   which popsift skips. `LOCAL` (a health check from the balancer itself) and `UNSPEC`
//!   carry no client: the connection's own address is used.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (spec §2.2).
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (spec §2.1).
pub const V1_MAX: usize = 107;
/// Longest v2 header popsift accepts (16 + addresses + TLVs). The format allows 64 KiB of
/// TLVs; HAProxy sends a few dozen octets. A cap keeps a hostile header from costing memory.
pub const V2_MAX: usize = 16 + 1024;
/// Shortest header of either version (`PROXY UNKNOWN\r\n` is 15 octets, v2 has 16).
const MIN_HEADER: usize = 15;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// The client's address; `None` for v1 `UNKNOWN`, v2 `LOCAL` or `UNSPEC` (use the
    /// connection's own peer address).
    pub source: Option<SocketAddr>,
}

/// The outcome of [`parse`] on the octets received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More input is needed: at least `need` octets in all (always more than given).
    Incomplete { need: usize },
    /// A complete header of `consumed` octets.
    Done { header: Header, consumed: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header (first octets {0:?})")]
    NotProxy(String),
    #[error("PROXY v1 header longer than {V1_MAX} octets")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2: unsupported version {0}")]
    V2Version(u8),
    #[error("PROXY v2: unsupported command {0}")]
    V2Command(u8),
    #[error("PROXY v2: unsupported address family/transport 0x{0:02x}")]
    V2Family(u8),
    #[error("PROXY v2: header of {0} octets exceeds the limit of {V2_MAX}")]
    V2TooLong(usize),
    #[error("PROXY v2: address block of {len} octets is too short for family 0x{family:02x}")]
    V2Short { family: u8, len: usize },
    #[error("connection closed inside the PROXY header")]
    Closed,
    #[error("PROXY header not received within {0:?} (proxy_header deadline)")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// Parses a PROXY header from the start of `buf` (see the module doc).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let first = match buf.first() {
        None => return Ok(Parsed::Incomplete { need: MIN_HEADER }),
        Some(b) => *b,
    };
    let n = buf.len();
    if first == b'\r' {
        let known = n.min(V2_SIGNATURE.len());
        if buf.get(..known) != V2_SIGNATURE.get(..known) {
            return Err(not_proxy(buf));
        }
        return parse_v2(buf);
    }
    let known = n.min(6);
    if buf.get(..known) != b"PROXY ".get(..known) {
        return Err(not_proxy(buf));
    }
    parse_v1(buf)
}

fn not_proxy(buf: &[u8]) -> ProxyError {
    ProxyError::NotProxy(String::from_utf8_lossy(buf.get(..16).unwrap_or(buf)).into_owned())
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        // A lone LF or other control octet can never start a valid line end.
        if buf.iter().any(|&b| b == b'\n' || b == 0) {
            return Err(ProxyError::V1Malformed("stray control octet"));
        }
        return Ok(Parsed::Incomplete { need: (buf.len() + 1).max(MIN_HEADER) });
    };
    if end + 2 > V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    let line =
        std::str::from_utf8(buf.get(..end).unwrap_or_default()).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let proto = parts.next().ok_or(ProxyError::V1Malformed("no protocol"))?;
    let consumed = end + 2;
    if proto == "UNKNOWN" {
        // Spec §2.1: the rest of the line is to be ignored.
        return Ok(Parsed::Done { header: Header { version: 1, source: None }, consumed });
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(ProxyError::V1Malformed("expected 4 fields after the protocol"));
    };
    let ip = |t: &str| -> Result<IpAddr, ProxyError> {
        let a: IpAddr = if v6 {
            t.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::V1Malformed("bad IPv6 address"))?
        } else {
            t.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| ProxyError::V1Malformed("bad IPv4 address"))?
        };
        Ok(a)
    };
    let port = |t: &str| -> Result<u16, ProxyError> {
        // Spec §2.1: decimal, no leading zero.
        if t.is_empty() || (t.len() > 1 && t.starts_with('0')) || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::V1Malformed("bad port"));
        }
        t.parse().map_err(|_| ProxyError::V1Malformed("bad port"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    ip(dst)?;
    port(dport)?;
    Ok(Parsed::Done { header: Header { version: 1, source: Some(source) }, consumed })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let fixed: &[u8; 16] = match buf.get(..16).and_then(|b| b.try_into().ok()) {
        Some(f) => f,
        None => return Ok(Parsed::Incomplete { need: 16 }),
    };
    let [.., ver_cmd, family, len_hi, len_lo] = *fixed;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(ProxyError::V2Command(c)),
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(ProxyError::V2TooLong(total));
    }
    let Some(body) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete { need: total });
    };
    let done = |source| Ok(Parsed::Done { header: Header { version: 2, source }, consumed: total });
    if local {
        // Spec §2.2: LOCAL — the balancer's own connection (a health check); the address
        // block, whatever it holds, is skipped.
        return done(None);
    }
    let short = || ProxyError::V2Short { family, len };
    match family {
        0x00 => done(None),
        0x11 => {
            let a: &[u8; 12] = body.get(..12).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let [s0, s1, s2, s3, _, _, _, _, p0, p1, _, _] = *a;
            done(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(s0, s1, s2, s3)), u16::from_be_bytes([p0, p1]))))
        }
        0x21 => {
            let a: &[u8; 36] = body.get(..36).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(a.get(..16).ok_or_else(short)?);
            let port = u16::from_be_bytes([a[32], a[33]]);
            done(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)))
        }
        f => Err(ProxyError::V2Family(f)),
    }
}

/// Reads one header from `io` within `deadline`, taking exactly its octets off the socket.
pub async fn read_header<S: AsyncRead + Unpin>(io: &mut S, deadline: Duration) -> Result<Header, ProxyError> {
    let read = async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse(&buf)? {
                Parsed::Done { header, .. } => return Ok(header),
                Parsed::Incomplete { need } => {
                    let have = buf.len();
                    buf.resize(need, 0);
                    let target = buf.get_mut(have..).unwrap_or_default();
                    match io.read_exact(target).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ProxyError::Closed),
                        Err(e) => return Err(ProxyError::Io(e.to_string())),
                    }
                }
            }
        }
    };
    tokio::time::timeout(deadline, read).await.map_err(|_| ProxyError::Timeout(deadline))?
}

/// Encodes a v2 `PROXY` header for TCP (used by tests and the bench as a balancer would).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at `at` the way [`read_header`] would (asking for `need` octets
    /// at a time, but only `at` available at first) and checks the outcome does not depend
    /// on the split.
    fn parse_split(input: &[u8], at: usize) -> Result<Parsed, ProxyError> {
        let first = input.get(..at).unwrap_or(input);
        match parse(first)? {
            Parsed::Done { header, consumed } => Ok(Parsed::Done { header, consumed }),
            Parsed::Incomplete { need } => {
                assert!(need > first.len(), "need {need} must exceed the {} octets given", first.len());
                parse(input)
            }
        }
    }

    /// Same outcome; for errors the same kind (a `NotProxy` seen earlier quotes fewer octets).
    fn same(a: &Result<Parsed, ProxyError>, b: &Result<Parsed, ProxyError>) -> bool {
        match (a, b) {
            (Err(x), Err(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
            _ => a == b,
        }
    }

    fn every_split(input: &[u8]) -> Result<Parsed, ProxyError> {
        let whole = parse(input);
        for at in 0..=input.len() {
            let got = parse_split(input, at);
            assert!(same(&got, &whole), "split at {at} of {:?}: {got:?} vs {whole:?}", String::from_utf8_lossy(input));
        }
        // Byte at a time, as read_header does, never asks for more than the header.
        let mut n = 0;
        loop {
            match parse(input.get(..n).unwrap_or(input)) {
                Ok(Parsed::Incomplete { need }) => {
                    if need > input.len() {
                        break;
                    }
                    n = need;
                }
                other => {
                    assert!(same(&other, &whole), "{other:?} vs {whole:?}");
                    break;
                }
            }
        }
        whole
    }

    #[test]
    fn v1_tcp4_at_every_split_point() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n";
        let mut with_tail = h.to_vec();
        with_tail.extend_from_slice(b"USER alice\r\n");
        let r = every_split(h).unwrap();
        let want = Parsed::Done {
            header: Header { version: 1, source: Some("192.0.2.7:40000".parse().unwrap()) },
            consumed: h.len(),
        };
        assert_eq!(r, want);
        // Octets after the header are not consumed.
        assert_eq!(parse(&with_tail).unwrap(), want);
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 995\r\n";
        assert_eq!(
            every_split(h).unwrap(),
            Parsed::Done {
                header: Header { version: 1, source: Some("[2001:db8::7]:5555".parse().unwrap()) },
                consumed: h.len()
            }
        );
        let u = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(
            every_split(u).unwrap(),
            Parsed::Done { header: Header { version: 1, source: None }, consumed: u.len() }
        );
        assert!(matches!(every_split(b"PROXY UNKNOWN\r\n").unwrap(), Parsed::Done { consumed: 15, .. }));
    }

    #[test]
    fn v1_malformed_headers_are_refused_at_every_split_point() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 070000 110\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 110\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
            b"USER alice\r\n",
            b"GET / HTTP/1.0\r\n",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        ];
        for b in bad {
            assert!(every_split(b).is_err(), "{:?} accepted", String::from_utf8_lossy(b));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(every_split(&long), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v2_round_trips_at_every_split_point() {
        for (s, d) in [("127.0.0.9:51000", "127.0.0.1:1110"), ("[2001:db8::9]:51000", "[2001:db8::1]:110")] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let h = encode_v2(s, d);
            assert_eq!(
                every_split(&h).unwrap(),
                Parsed::Done { header: Header { version: 2, source: Some(s) }, consumed: h.len() }
            );
        }
    }

    #[test]
    fn v2_local_unspec_and_tlvs() {
        // LOCAL with an empty address block: a balancer's health check.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            every_split(&local).unwrap(),
            Parsed::Done { header: Header { version: 2, source: None }, consumed: 16 }
        );
        // PROXY over TCP4 followed by a TLV (type 0x04 NOOP, 3 octets) that is skipped.
        let mut h = encode_v2("10.1.2.3:4".parse().unwrap(), "10.0.0.1:110".parse().unwrap());
        h[15] = 12 + 6;
        h.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        assert!(matches!(
            every_split(&h).unwrap(),
            Parsed::Done { consumed: 34, header: Header { source: Some(_), .. } }
        ));
    }

    #[test]
    fn v2_malformed_headers_are_refused_at_every_split_point() {
        let base = encode_v2("10.1.2.3:4".parse().unwrap(), "10.0.0.1:110".parse().unwrap());
        let mut version = base.clone();
        version[12] = 0x31;
        let mut command = base.clone();
        command[12] = 0x22;
        let mut udp = base.clone();
        udp[13] = 0x12;
        let mut short = base.clone();
        short[15] = 4;
        short.truncate(20);
        let mut huge = base.clone();
        huge[14] = 0xff;
        let mut sig = base.clone();
        sig[7] = b'X';
        for (name, b) in
            [("version", version), ("command", command), ("udp", udp), ("short", short), ("huge", huge), ("sig", sig)]
        {
            assert!(every_split(&b).is_err(), "{name} accepted");
        }
    }

    #[tokio::test]
    async fn read_header_leaves_the_following_bytes_in_the_socket() {
        let mut input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\nCAPA\r\n".as_slice();
        let h = read_header(&mut input, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.source, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(input, b"CAPA\r\n");
        let mut v2 = encode_v2("127.0.0.5:7".parse().unwrap(), "127.0.0.1:1".parse().unwrap());
        v2.extend_from_slice(b"\x16\x03\x01");
        let mut r = v2.as_slice();
        read_header(&mut r, Duration::from_secs(5)).await.unwrap();
        assert_eq!(r, b"\x16\x03\x01");
        let mut cut = b"PROXY TCP4 192.0".as_slice();
        assert_eq!(read_header(&mut cut, Duration::from_secs(5)).await, Err(ProxyError::Closed));
    }
}
