//! The CAPA list (RFC 2449 §5): one capability per line, a tag followed by optional
//! space-separated arguments, e.g. `SASL PLAIN LOGIN`, `IMPLEMENTATION Dovecot`.

/// One capability line: the upper-cased tag and the arguments exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub tag: String,
    pub args: String,
}

impl Capability {
    pub fn new(tag: &str, args: &str) -> Capability {
        Capability { tag: tag.to_ascii_uppercase(), args: args.to_string() }
    }
}

/// Parses the unstuffed body of a CAPA response (lines separated by CRLF or LF). Lines that
/// are empty or not text are skipped: a capability we cannot read is one we cannot relay.
pub fn parse(body: &[u8]) -> Vec<Capability> {
    body.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).ok()?.trim();
            if line.is_empty() {
                return None;
            }
            let (tag, args) = line.split_once(' ').unwrap_or((line, ""));
            Some(Capability::new(tag, args.trim()))
        })
        .collect()
}

/// Encodes a full CAPA response: status line, one line per capability, terminator.
pub fn encode(caps: &[Capability]) -> Vec<u8> {
    let mut out = b"+OK Capability list follows\r\n".to_vec();
    for c in caps {
        out.extend_from_slice(c.tag.as_bytes());
        if !c.args.is_empty() {
            out.push(b' ');
            out.extend_from_slice(c.args.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_dovecot_list() {
        let body = b"CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5\r\n";
        let caps = parse(body);
        assert_eq!(caps.len(), 9);
        assert_eq!(caps[8], Capability::new("SASL", "PLAIN LOGIN CRAM-MD5"));
        assert_eq!(caps[0].tag, "CAPA");
    }

    #[test]
    fn tags_upper_cased_and_junk_skipped() {
        let caps = parse(b"top\n\n\xff\xfe\nexpire 30 USER\n");
        assert_eq!(caps, vec![Capability::new("TOP", ""), Capability::new("EXPIRE", "30 USER")]);
    }

    #[test]
    fn round_trip() {
        let caps = vec![Capability::new("TOP", ""), Capability::new("SASL", "PLAIN")];
        let enc = encode(&caps);
        let body_start = enc.iter().position(|&b| b == b'\n').unwrap() + 1;
        let body = &enc[body_start..enc.len() - 3];
        assert_eq!(parse(body), caps);
    }
}
