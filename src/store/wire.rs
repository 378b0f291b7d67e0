//! The byte-level pieces of popsift's compact binary records (the decision history's,
//! [`crate::store::history_codec`], and the verdict memo's, [`crate::store::verdict_memo`]):
//! integers as LEB128 varints, floats as their 8 little-endian bytes, strings
//! length-prefixed UTF-8, and a reader whose every read is checked, so a malformed record
//! is `None`, never a panic.

/// Appends `v` as a LEB128 varint.
pub fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `s`, length first.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `v`'s bits, little-endian (NaN and −0 come back exactly).
pub fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads what the `put_*` functions wrote, front to back.
pub struct Reader<'a> {
    /// What is not read yet.
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    pub fn uint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint()?).ok()
    }

    pub fn f64(&mut self) -> Option<f64> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(f64::from_le_bytes(b))
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.uint()?).ok()?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    pub fn string(&mut self) -> Option<String> {
        self.str().map(str::to_string)
    }

    /// A list length, refused when it cannot fit in what is left (each element takes at
    /// least one byte): a corrupt length never allocates.
    pub fn list_len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.uint()?).ok()?;
        (n <= self.rest.len()).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_input() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            put_uint(&mut out, v);
        }
        put_str(&mut out, "");
        put_str(&mut out, "Grüße");
        put_f64(&mut out, -0.0);
        put_f64(&mut out, f64::NAN);
        let mut r = Reader::new(&out);
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(r.uint(), Some(v));
        }
        assert_eq!(r.str(), Some(""));
        assert_eq!(r.str(), Some("Grüße"));
        assert_eq!(r.f64().map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!(r.f64().map(f64::to_bits), Some(f64::NAN.to_bits()));
        assert!(r.rest.is_empty() && r.byte().is_none());
        // Truncated, overlong and non-UTF-8 input: None, no panic.
        assert_eq!(Reader::new(&[0x80]).uint(), None);
        assert_eq!(Reader::new(&[0xff; 11]).uint(), None);
        assert_eq!(Reader::new(&[5, b'a']).str(), None);
        assert_eq!(Reader::new(&[1, 0xff]).str(), None);
        assert_eq!(Reader::new(&[9, 0]).list_len(), None);
    }
}
