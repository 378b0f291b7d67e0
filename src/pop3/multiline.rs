//! Multi-line responses (RFC 1939 §3): lines follow the `+OK` line, any line starting with
//! `.` is byte-stuffed with a second `.`, and a line holding a single `.` ends the response.
//!
//! [`BodyScanner`] finds the terminator in a stream of chunks without copying, so a relay can
//! forward bytes verbatim (dot-stuffing preserved byte for byte) in bounded buffers.
//! [`HeaderCollector`] keeps only the header block of a `TOP n 0` reply, capped, because
//! some servers answer `TOP n 0` with the whole message. [`HeaderSplitter`] finds where the
//! header block of a RETR/TOP body ends, whatever the chunking (the tagged relay).
//! [`BodyFeed`] is what the one body-relay step (`net::conn::Conn::relay_buffered`) drives.
//! [`dot_stuff`] / [`unstuff`] convert between message content and the wire form.
//!
//! Lines end in CRLF on the wire; a bare LF is accepted as a line end so that a sloppy
//! server cannot make the scanner run past the end of a response.

/// Incremental terminator finder for a multi-line response body.
#[derive(Debug, Clone, Default)]
pub struct BodyScanner {
    state: ScanState,
    terminator_len: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ScanState {
    /// At the start of a line (the body starts here, right after the status line).
    #[default]
    LineStart,
    /// Inside a line: the next octet to look at is never the first of a line (every way
    /// here consumes at least the line's first octet), which [`find_line_dot`] relies on.
    Mid,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` CR at the start of a line.
    DotCr,
    /// The terminator has been seen.
    Done,
}

impl BodyScanner {
    pub fn new() -> BodyScanner {
        BodyScanner::default()
    }

    /// Feeds the next bytes of the body. Returns `Some(n)` when the terminator ends at
    /// `chunk[n - 1]`: the first `n` bytes belong to this response (terminator included) and
    /// the rest to whatever follows. Returns `None` when all of `chunk` belongs to the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while let Some(&byte) = chunk.get(i) {
            match self.state {
                ScanState::Done => return Some(0),
                // Only a line that starts with `.` can end the body, so the scan jumps from
                // one "\n." to the next in one vectorised search instead of stopping at
                // every line (issue 16: that was a third of popsift's user-space CPU when
                // relaying pipelined RETRs).
                ScanState::Mid => match find_line_dot(chunk.get(i..).unwrap_or_default()) {
                    Some(off) => {
                        i += off + 2;
                        self.state = ScanState::Dot;
                    }
                    None => {
                        if chunk.last() == Some(&b'\n') {
                            self.state = ScanState::LineStart;
                        }
                        return None;
                    }
                },
                ScanState::LineStart => {
                    self.state = match byte {
                        b'.' => ScanState::Dot,
                        b'\n' => ScanState::LineStart,
                        _ => ScanState::Mid,
                    };
                    i += 1;
                }
                ScanState::Dot => match byte {
                    b'\r' => {
                        self.state = ScanState::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        self.state = ScanState::Done;
                        self.terminator_len = 2;
                        return Some(i + 1);
                    }
                    _ => self.state = ScanState::Mid,
                },
                ScanState::DotCr => match byte {
                    b'\n' => {
                        self.state = ScanState::Done;
                        self.terminator_len = 3;
                        return Some(i + 1);
                    }
                    _ => self.state = ScanState::Mid,
                },
            }
        }
        None
    }

    pub fn is_done(&self) -> bool {
        self.state == ScanState::Done
    }

    /// Length of the terminator line (`.\r\n` = 3, `.\n` = 2) once done.
    pub fn terminator_len(&self) -> usize {
        self.terminator_len
    }
}

/// The searcher for a line that starts with `.` (built once).
fn line_dot() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(b"\n."))
}

/// A `.` that is not at a line start costs the search below this many stops before it
/// hands the rest of the chunk to the pair search.
const DOT_STOPS: usize = 8;

/// Where the next "\n." starts in `hay`, which does not start at a line start. Most of a
/// mailbox's octets are base64 attachments, which hold no `.` at all: a search for the
/// single octet `.` runs over them in a third of the pair search's instructions (issue 16:
/// the pair search was the largest single cost of a relayed 10 KB body). Text has a `.` in
/// most lines, so after [`DOT_STOPS`] stops at a `.` inside a line the pair search takes over.
fn find_line_dot(hay: &[u8]) -> Option<usize> {
    let mut from = 0;
    for _ in 0..DOT_STOPS {
        let dot = from + memchr::memchr(b'.', hay.get(from..)?)?;
        // `hay[0]` is never at a line start (see `ScanState::Mid`): a `.` there is skipped.
        if dot > 0 && hay.get(dot - 1) == Some(&b'\n') {
            return Some(dot - 1);
        }
        from = dot + 1;
    }
    // Every `.` before `from` was looked at, so every "\n." before it too.
    line_dot().find(hay.get(from..)?).map(|n| from + n)
}

/// Keeps the header block of a multi-line reply (normally `TOP n 0`), unstuffed, up to a cap,
/// and discards the rest while still finding the terminator.
#[derive(Debug, Clone)]
pub struct HeaderCollector {
    scanner: BodyScanner,
    raw: Vec<u8>,
    cap: usize,
    /// The blank line ending the header block was seen.
    complete: bool,
    /// The cap cut the header block short.
    truncated: bool,
    search_from: usize,
}

/// The header block of one message, as collected from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderBlock {
    /// Unstuffed header lines, including the blank line that ends them when it was seen.
    pub bytes: Vec<u8>,
    /// True when the block hit the size cap.
    pub truncated: bool,
}

impl HeaderCollector {
    pub fn new(cap: usize) -> HeaderCollector {
        HeaderCollector {
            scanner: BodyScanner::new(),
            raw: Vec::new(),
            cap,
            complete: false,
            truncated: false,
            search_from: 0,
        }
    }

    /// Feeds the next bytes of the body; same contract as [`BodyScanner::feed`].
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        let done = self.scanner.feed(chunk);
        let body = match done {
            Some(n) => chunk.get(..n).unwrap_or(chunk),
            None => chunk,
        };
        if !self.complete && !self.truncated {
            let room = self.cap.saturating_add(3).saturating_sub(self.raw.len());
            let take = body.len().min(room);
            self.raw.extend_from_slice(body.get(..take).unwrap_or(body));
            self.find_blank_line();
            // Keep looking until cap + 3 bytes are in, so a blank line straddling the cap
            // is found whatever the chunking.
            if !self.complete && self.raw.len() >= self.cap.saturating_add(3) {
                self.truncated = true;
            }
        }
        if done.is_some() && !self.complete && !self.truncated {
            // The whole body fit: drop the terminator line itself.
            let t = self.scanner.terminator_len();
            self.raw.truncate(self.raw.len().saturating_sub(t));
            if self.raw.len() > self.cap {
                self.truncated = true;
            }
        }
        done
    }

    fn find_blank_line(&mut self) {
        // A blank line is an empty line: at the very start, or LF followed by (CR) LF.
        if self.search_from == 0 {
            if self.raw.starts_with(b"\r\n") {
                self.finish_at(2);
                return;
            }
            if self.raw.starts_with(b"\n") {
                self.finish_at(1);
                return;
            }
        }
        let mut from = self.search_from;
        while let Some(off) = memchr::memchr(b'\n', self.raw.get(from..).unwrap_or_default()) {
            let lf = from + off;
            match (self.raw.get(lf + 1), self.raw.get(lf + 2)) {
                (Some(b'\n'), _) => return self.finish_at(lf + 2),
                (Some(b'\r'), Some(b'\n')) => return self.finish_at(lf + 3),
                (None, _) | (Some(b'\r'), None) => {
                    // Undecided until more bytes arrive: re-check from this LF.
                    self.search_from = lf;
                    return;
                }
                _ => from = lf + 1,
            }
        }
        self.search_from = self.raw.len().saturating_sub(1).max(self.search_from);
    }

    fn finish_at(&mut self, end: usize) {
        self.raw.truncate(end);
        self.complete = true;
    }

    /// The collected header block. Call after `feed` returned `Some`.
    pub fn finish(mut self) -> HeaderBlock {
        if self.truncated {
            self.raw.truncate(self.cap);
        }
        HeaderBlock { bytes: unstuff(&self.raw), truncated: self.truncated }
    }
}

/// Incremental [`unstuff`]: feed the body chunk by chunk (terminator excluded).
#[derive(Debug, Clone)]
pub struct Unstuffer {
    at_line_start: bool,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Unstuffer { at_line_start: true }
    }
}

impl Unstuffer {
    pub fn feed(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        let mut rest = wire;
        while !rest.is_empty() {
            if self.at_line_start {
                if let Some((b'.', after)) = rest.split_first() {
                    rest = after;
                    self.at_line_start = false;
                    continue;
                }
            }
            match memchr::memchr(b'\n', rest).and_then(|off| rest.split_at_checked(off + 1)) {
                Some((line, after)) => {
                    out.extend_from_slice(line);
                    rest = after;
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    self.at_line_start = false;
                    break;
                }
            }
        }
    }
}

/// Removes byte-stuffing from wire content (without the terminator line).
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut at_line_start = true;
    let mut rest = wire;
    while !rest.is_empty() {
        if at_line_start {
            if let Some((b'.', after)) = rest.split_first() {
                rest = after;
            }
        }
        match memchr::memchr(b'\n', rest).and_then(|off| rest.split_at_checked(off + 1)) {
            Some((line, after)) => {
                out.extend_from_slice(line);
                rest = after;
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
    out
}

/// Where the header block ends in a stuffed multi-line body, if it is in `raw` yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEnd {
    /// The empty line ending the header block ends at `raw[end - 1]`.
    Blank { end: usize },
    /// The body ended (terminator line from `start` to `end`) before any empty line: the
    /// message is all header.
    Terminator { start: usize, end: usize },
}

/// Finds the end of the header block in the stuffed wire bytes of a RETR/TOP body.
pub fn find_header_end(raw: &[u8]) -> Option<HeaderEnd> {
    let mut line_start = 0;
    while let Some(rest) = raw.get(line_start..).filter(|r| !r.is_empty()) {
        let lf = memchr::memchr(b'\n', rest)?;
        let line = rest.get(..lf + 1)?;
        if line == b"\r\n" || line == b"\n" {
            return Some(HeaderEnd::Blank { end: line_start + lf + 1 });
        }
        if line == b".\r\n" || line == b".\n" {
            return Some(HeaderEnd::Terminator { start: line_start, end: line_start + lf + 1 });
        }
        line_start += lf + 1;
    }
    None
}

/// The one chunk-independent header-block splitter: fed the stuffed wire bytes of a
/// RETR/TOP body in chunks of any size, it keeps them (up to a cap) and reports where the
/// header block ends — at the same place [`find_header_end`] finds on the whole body,
/// wherever the chunks were cut. Each byte is searched once: only lines completed by the
/// newest chunk are looked at.
#[derive(Debug, Clone)]
pub struct HeaderSplitter {
    raw: Vec<u8>,
    /// Start of the first line not yet known to be a plain header line.
    line_start: usize,
    cap: usize,
}

impl HeaderSplitter {
    /// `cap`: past this many octets without an end the block is [`HeaderSplitter::over_cap`].
    pub fn new(cap: usize) -> HeaderSplitter {
        HeaderSplitter { raw: Vec::new(), line_start: 0, cap }
    }

    /// Appends `chunk`; returns where the header block ends once that is known (offsets
    /// into [`HeaderSplitter::raw`]).
    pub fn feed(&mut self, chunk: &[u8]) -> Option<HeaderEnd> {
        self.raw.extend_from_slice(chunk);
        let from = self.line_start;
        let tail = self.raw.get(from..).unwrap_or_default();
        if let Some(end) = find_header_end(tail) {
            return Some(match end {
                HeaderEnd::Blank { end } => HeaderEnd::Blank { end: end + from },
                HeaderEnd::Terminator { start, end } => HeaderEnd::Terminator { start: start + from, end: end + from },
            });
        }
        // Every complete line in the tail was a header line: search after them next time.
        if let Some(lf) = memchr::memrchr(b'\n', tail) {
            self.line_start = from + lf + 1;
        }
        None
    }

    /// More than the cap has been fed without the end of the header block.
    pub fn over_cap(&self) -> bool {
        self.raw.len() > self.cap
    }

    /// Everything fed so far.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Follows a multi-line body chunk by chunk and says where it ends: the contract of
/// [`BodyScanner::feed`]. Lets one relay step (`net::conn::Conn::relay_buffered`) serve
/// every reader of a body.
pub trait BodyFeed {
    fn feed(&mut self, chunk: &[u8]) -> Option<usize>;
}

impl BodyFeed for BodyScanner {
    fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        BodyScanner::feed(self, chunk)
    }
}

impl BodyFeed for HeaderCollector {
    fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        HeaderCollector::feed(self, chunk)
    }
}

/// Stuffs content whose lines already end in CRLF (a header block), without adding a
/// terminator.
pub fn stuff_lines(content: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
}

/// Encodes message content for a multi-line response: stuffs lines that start with `.`,
/// turns bare LF into CRLF, makes sure the content ends with CRLF, and appends the `.\r\n`
/// terminator.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + content.len() / 32 + 5);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !content.is_empty() && !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a fresh scanner split at `split`; returns the consumed length.
    fn scan_split(input: &[u8], split: usize) -> Option<usize> {
        let mut s = BodyScanner::new();
        let (a, b) = input.split_at(split);
        match s.feed(a) {
            Some(n) => Some(n),
            None => s.feed(b).map(|n| a.len() + n),
        }
    }

    fn scan_every_split(input: &[u8]) -> Option<usize> {
        let whole = scan_split(input, 0);
        for split in 0..=input.len() {
            assert_eq!(scan_split(input, split), whole, "split at {split} of {input:?}");
        }
        // Byte by byte too.
        let mut s = BodyScanner::new();
        let mut bytewise = None;
        for (i, b) in input.iter().enumerate() {
            if let Some(n) = s.feed(std::slice::from_ref(b)) {
                assert_eq!(n, 1);
                bytewise = Some(i + 1);
                break;
            }
        }
        assert_eq!(bytewise, whole);
        whole
    }

    #[test]
    fn finds_terminator() {
        let body = b"line 1\r\nline 2\r\n.\r\nNEXT";
        assert_eq!(scan_every_split(body), Some(body.len() - 4));
    }

    #[test]
    fn empty_body() {
        assert_eq!(scan_every_split(b".\r\n+OK"), Some(3));
    }

    #[test]
    fn stuffed_lines_are_not_terminators() {
        let body = b"..\r\n..x\r\n.x\r\nnot . end\r\n. \r\n.\r\n";
        assert_eq!(scan_every_split(body), Some(body.len()));
    }

    #[test]
    fn dot_cr_without_lf_is_not_a_terminator() {
        let body = b".\rx\r\n.\r\n";
        assert_eq!(scan_every_split(body), Some(body.len()));
    }

    #[test]
    fn bare_lf_terminator() {
        let body = b"a\n.\nrest";
        assert_eq!(scan_every_split(body), Some(4));
    }

    #[test]
    fn incomplete() {
        assert_eq!(scan_every_split(b"a\r\n.\r"), None);
        assert_eq!(scan_every_split(b"a\r\nb.\r\n"), None);
    }

    /// The terminator by its definition (RFC 1939 §3): the first line holding only `.`
    /// (CRLF or a bare LF), at the body's start or after a line end.
    fn terminator_by_definition(input: &[u8]) -> Option<usize> {
        (0..input.len()).find_map(|p| {
            let at_line_start = p == 0 || input[p - 1] == b'\n';
            let rest = &input[p..];
            match () {
                _ if at_line_start && rest.starts_with(b".\r\n") => Some(p + 3),
                _ if at_line_start && rest.starts_with(b".\n") => Some(p + 2),
                _ => None,
            }
        })
    }

    #[test]
    fn the_scanner_agrees_with_the_definition_on_every_short_body() {
        // Every body of up to 7 octets over the octets that matter (and one that does not),
        // at every split point and byte by byte: the search that jumps from "\n." to "\n."
        // finds exactly the terminator the line-by-line definition finds.
        let alphabet = [b'.', b'\r', b'\n', b'a'];
        for len in 0..=7u32 {
            for code in 0..alphabet.len().pow(len) {
                let mut c = code;
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[c % alphabet.len()];
                        c /= alphabet.len();
                        b
                    })
                    .collect();
                assert_eq!(scan_every_split(&body), terminator_by_definition(&body), "{body:?}");
            }
        }
    }

    #[test]
    fn terminator_behind_many_dots_inside_lines() {
        // More dots inside lines than the single-octet search stops for before the pair
        // search takes over, in one line and spread over lines, stuffed lines among them.
        let mut body = b"www.example.org. a.b.c.d.e.f.g.h.i.j.k.l\r\n..x\r\n".to_vec();
        body.extend(b"Mr. Smith. Dr. Who.\r\n".repeat(5));
        body.extend_from_slice(b".\r\nNEXT");
        let end = body.len() - 4;
        assert_eq!(terminator_by_definition(&body), Some(end));
        assert_eq!(scan_every_split(&body), Some(end));
    }

    proptest::proptest! {
        /// Bodies of text, dots and line ends in any mix agree with the definition at a
        /// random split, whichever search finds the line starts.
        #[test]
        fn the_scanner_agrees_with_the_definition_on_dotty_bodies(
            body in proptest::collection::vec(proptest::sample::select(b".\r\nab".to_vec()), 0..400),
            split in 0usize..400,
        ) {
            let split = split.min(body.len());
            let mut s = BodyScanner::new();
            let (a, b) = body.split_at(split);
            let found = s.feed(a).or_else(|| s.feed(b).map(|n| split + n));
            proptest::prop_assert_eq!(found, terminator_by_definition(&body));
        }
    }

    #[test]
    fn terminator_after_a_long_line_in_a_later_chunk() {
        let mut body = vec![b'x'; 100_000];
        body.extend_from_slice(b"\r\n..stuffed\r\n.\r\nNEXT");
        let end = body.len() - 4;
        assert_eq!(terminator_by_definition(&body), Some(end));
        for piece in [1, 7, 4096, 65536] {
            let mut s = BodyScanner::new();
            let mut seen = 0;
            let found = body.chunks(piece).find_map(|c| {
                let r = s.feed(c).map(|n| seen + n);
                seen += c.len();
                r
            });
            assert_eq!(found, Some(end), "pieces of {piece}");
        }
    }

    fn collect_split(input: &[u8], cap: usize, split: usize) -> (Option<usize>, HeaderBlock) {
        let mut c = HeaderCollector::new(cap);
        let (a, b) = input.split_at(split);
        let n = match c.feed(a) {
            Some(n) => Some(n),
            None => c.feed(b).map(|n| a.len() + n),
        };
        (n, c.finish())
    }

    fn collect_every_split(input: &[u8], cap: usize) -> (Option<usize>, HeaderBlock) {
        let whole = collect_split(input, cap, 0);
        for split in 0..=input.len() {
            assert_eq!(collect_split(input, cap, split), whole, "split at {split}");
        }
        whole
    }

    #[test]
    fn header_block_stops_at_blank_line() {
        let wire = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n..stuffed\r\n.\r\n";
        let (n, hb) = collect_every_split(wire, 1024);
        assert_eq!(n, Some(wire.len()));
        assert_eq!(hb.bytes, b"Subject: hi\r\nFrom: a@b\r\n\r\n");
        assert!(!hb.truncated);
    }

    #[test]
    fn header_block_without_body() {
        let wire = b"Subject: hi\r\n.\r\n";
        let (n, hb) = collect_every_split(wire, 1024);
        assert_eq!(n, Some(wire.len()));
        assert_eq!(hb.bytes, b"Subject: hi\r\n");
    }

    #[test]
    fn header_block_unstuffs() {
        let wire = b"X-A: 1\r\n..hidden: no\r\n\r\n.\r\n";
        let (_, hb) = collect_every_split(wire, 1024);
        assert_eq!(hb.bytes, b"X-A: 1\r\n.hidden: no\r\n\r\n");
    }

    #[test]
    fn header_block_is_capped() {
        let mut wire = Vec::new();
        for i in 0..100 {
            wire.extend_from_slice(format!("X-Long-{i}: {}\r\n", "v".repeat(50)).as_bytes());
        }
        wire.extend_from_slice(b"\r\nbody\r\n.\r\n");
        let (n, hb) = collect_every_split(&wire, 300);
        assert_eq!(n, Some(wire.len()));
        assert!(hb.truncated);
        assert_eq!(hb.bytes.len(), 300);
        assert_eq!(&hb.bytes[..], &wire[..300]);
    }

    #[test]
    fn lf_only_header_block() {
        let wire = b"Subject: x\nA: b\n\nbody\n.\n";
        let (n, hb) = collect_every_split(wire, 1024);
        assert_eq!(n, Some(wire.len()));
        assert_eq!(hb.bytes, b"Subject: x\nA: b\n\n");
    }

    #[test]
    fn unstuffer_matches_unstuff_at_every_split() {
        let wire = b"a\r\n..b\r\n.c\r\n...\r\nx";
        for split in 0..=wire.len() {
            let mut u = Unstuffer::default();
            let mut out = Vec::new();
            u.feed(&wire[..split], &mut out);
            u.feed(&wire[split..], &mut out);
            assert_eq!(out, unstuff(wire), "split {split}");
        }
    }

    #[test]
    fn header_end() {
        assert_eq!(find_header_end(b"A: b\r\n\r\nbody"), Some(HeaderEnd::Blank { end: 8 }));
        assert_eq!(find_header_end(b"A: b\r\n.\r\n"), Some(HeaderEnd::Terminator { start: 6, end: 9 }));
        assert_eq!(find_header_end(b"A: b\r\n..x\r\n\r"), None);
        assert_eq!(find_header_end(b"\r\nbody"), Some(HeaderEnd::Blank { end: 2 }));
    }

    /// Feeds `input` to a splitter in the given pieces; returns the end and the bytes kept.
    fn split_in(input: &[u8], cuts: &[usize]) -> Option<HeaderEnd> {
        let mut s = HeaderSplitter::new(usize::MAX);
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            if let Some(end) = s.feed(&input[from..cut]) {
                assert_eq!(s.raw(), &input[..cut]);
                return Some(end);
            }
            from = cut;
        }
        None
    }

    #[test]
    fn header_splitter_agrees_with_the_whole_body_at_every_split_point() {
        let bodies: &[&[u8]] = &[
            b"A: b\r\nC: d\r\n\r\nbody\r\n.\r\n",
            b"A: b\r\n.\r\n",
            b"\r\nbody\r\n.\r\n",
            b".\r\n",
            b"A: b\nC: d\n\nbody\n.\n",
            b"A: b\r\n..dotted: x\r\n\r\n.\r\n",
            b"A: b\r\n\rX: y\r\n\r\n",
            b"A: only headers, unterminated\r\nB: c",
            b"",
        ];
        for body in bodies {
            let whole = find_header_end(body);
            for i in 0..=body.len() {
                assert_eq!(split_in(body, &[i]), whole, "split at {i} of {body:?}");
                for j in i..=body.len() {
                    assert_eq!(split_in(body, &[i, j]), whole, "split at {i}, {j} of {body:?}");
                }
            }
            let bytewise: Vec<usize> = (1..body.len()).collect();
            assert_eq!(split_in(body, &bytewise), whole, "byte by byte: {body:?}");
        }
    }

    #[test]
    fn header_splitter_reports_over_cap() {
        let mut s = HeaderSplitter::new(10);
        assert_eq!(s.feed(b"A: 123456\r\n"), None);
        assert!(s.over_cap());
        assert_eq!(s.feed(b"\r\n"), Some(HeaderEnd::Blank { end: 13 }));
    }

    #[test]
    fn stuff_unstuff_round_trip() {
        let content = b"a\r\n.b\r\n..\r\n.\r\nlast".to_vec();
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        assert_eq!(wire, b"a\r\n..b\r\n...\r\n..\r\nlast\r\n.\r\n");
        let mut s = BodyScanner::new();
        assert_eq!(s.feed(&wire), Some(wire.len()));
        assert_eq!(unstuff(&wire[..wire.len() - 3]), b"a\r\n.b\r\n..\r\n.\r\nlast\r\n");
        let mut lf = Vec::new();
        dot_stuff(b"x\n.y\n", &mut lf);
        assert_eq!(lf, b"x\r\n..y\r\n.\r\n");
    }
}
