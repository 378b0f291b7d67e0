//! Reading messages from mailbox files: single `.eml` files, Maildir folders (`cur/` +
//! `new/`), mbox files, and directories of them; plus the labels TSV that goes with a
//! corpus. One home for this so `scan`, `train` and `quarantine` agree on what a mailbox
//! file is. (Writing into Maildir/mbox for `quarantine restore` lives with the quarantine
//! store, which owns the delivery rules.)
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One message read from disk: a label for output (path, or `path#N` inside an mbox) and
/// its bytes.
#[derive(Debug, Clone)]
pub struct MessageItem {
    pub label: String,
    pub bytes: Vec<u8>,
}

/// Reads messages from a path: an `.eml`/message file (an mbox `From ` first line is fine),
/// an mbox file with several messages (`path#1`, `path#2`, …), a Maildir (`cur/`, `new/`),
/// or a directory of message files (`*.eml`, `*.msg`, names without a dot, `*.mbox`, and
/// Maildirs inside it). Files are taken in name order. Any unreadable file is an error.
pub fn read_messages(path: &Path) -> std::io::Result<Vec<MessageItem>> {
    let (items, failed) = read_messages_lenient(path)?;
    match failed.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(items),
    }
}

/// Like [`read_messages`], but a file inside a directory that cannot be read is returned
/// in the second list instead of failing the whole path. A missing or unreadable `path`
/// itself is still an error.
#[allow(clippy::type_complexity)]
pub fn read_messages_lenient(path: &Path) -> std::io::Result<(Vec<MessageItem>, Vec<(PathBuf, std::io::Error)>)> {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    collect_messages(path, &mut out, &mut failed)?;
    Ok((out, failed))
}

fn collect_messages(
    path: &Path,
    out: &mut Vec<MessageItem>,
    failed: &mut Vec<(PathBuf, std::io::Error)>,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let is_maildir = path.join("cur").is_dir() && path.join("new").is_dir();
        if is_maildir {
            for sub in ["new", "cur"] {
                for f in sorted_entries(&path.join(sub))? {
                    if f.is_file() {
                        match std::fs::read(&f) {
                            Ok(bytes) => out.push(MessageItem { label: f.display().to_string(), bytes }),
                            Err(e) => failed.push((f, e)),
                        }
                    }
                }
            }
            return Ok(());
        }
        for f in sorted_entries(path)? {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if f.is_dir() {
                if f.join("cur").is_dir() && f.join("new").is_dir() {
                    if let Err(e) = collect_messages(&f, out, failed) {
                        failed.push((f, e));
                    }
                }
                continue;
            }
            let lower = name.to_ascii_lowercase();
            let wanted = lower.ends_with(".eml")
                || lower.ends_with(".msg")
                || lower.ends_with(".mbox")
                || lower.ends_with(".mbx")
                || !lower.contains('.');
            if wanted {
                match read_file(&f) {
                    Ok(v) => out.extend(v),
                    Err(e) => failed.push((f, e)),
                }
            }
        }
        return Ok(());
    }
    out.extend(read_file(path)?);
    Ok(())
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

fn read_file(path: &Path) -> std::io::Result<Vec<MessageItem>> {
    let bytes = std::fs::read(path)?;
    let label = path.display().to_string();
    let parts = split_mbox(&bytes);
    if parts.len() <= 1 {
        return Ok(vec![MessageItem { label, bytes }]);
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, m)| MessageItem { label: format!("{label}#{}", i + 1), bytes: m.to_vec() })
        .collect())
}

/// Splits mbox content at `From ` lines that start the file or follow an empty line.
/// Content not starting with `From ` is one message.
pub fn split_mbox(bytes: &[u8]) -> Vec<&[u8]> {
    if !bytes.starts_with(b"From ") {
        return vec![bytes];
    }
    let mut starts = vec![0usize];
    let mut i = 0;
    while let Some(p) = memchr::memmem::find(&bytes[i..], b"\nFrom ") {
        let at = i + p + 1;
        let prev = &bytes[..at - 1];
        if prev.ends_with(b"\n") || prev.ends_with(b"\n\r") || prev.is_empty() {
            starts.push(at);
        }
        i = at;
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(bytes.len());
        out.push(&bytes[s..e]);
    }
    out
}

/// The header block of a message: up to and including the first empty line.
pub fn header_block(msg: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < msg.len() {
        let end = memchr::memchr(b'\n', &msg[pos..]).map(|i| pos + i + 1).unwrap_or(msg.len());
        let line = &msg[pos..end];
        if line == b"\n" || line == b"\r\n" {
            return &msg[..end];
        }
        pos = end;
    }
    msg
}

/// Reads a labels TSV: `file name <TAB> spam|ham [<TAB> …]`; a header row is skipped.
pub fn read_labels(path: &Path) -> std::io::Result<HashMap<String, bool>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(name), Some(label)) = (cols.next(), cols.next()) else {
            continue;
        };
        match label.trim().to_ascii_lowercase().as_str() {
            "spam" => out.insert(name.trim().to_string(), true),
            "ham" => out.insert(name.trim().to_string(), false),
            _ => continue,
        };
    }
    Ok(out)
}

/// The key a labels file uses for a message: its file name.
pub fn label_key(label: &str) -> String {
    let base = label.rsplit('/').next().unwrap_or(label);
    base.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_split() {
        let m = b"From a\nSubject: 1\n\nbody\nFrom b\n\nFrom c\nSubject: 2\n\nx\n";
        let parts = split_mbox(m);
        assert_eq!(parts.len(), 2);
        assert!(parts[1].starts_with(b"From c"));
        assert_eq!(split_mbox(b"Subject: x\n\n").len(), 1);
    }

    #[test]
    fn header_block_stops_at_blank_line() {
        assert_eq!(header_block(b"A: b\r\n\r\nbody"), b"A: b\r\n\r\n");
        assert_eq!(header_block(b"A: b"), b"A: b");
    }

    #[test]
    fn reads_eml_maildir_mbox_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.eml"), b"Subject: a\r\n\r\nbody\r\n").unwrap();
        std::fs::write(d.join("box.mbox"), b"From x\nSubject: 1\n\nb\n\nFrom y\nSubject: 2\n\nc\n").unwrap();
        std::fs::write(d.join("notes.txt"), b"not mail").unwrap();
        std::fs::write(d.join(".hidden"), b"Subject: h\n\n").unwrap();
        let md = d.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        std::fs::write(md.join("new").join("1"), b"Subject: new\n\n").unwrap();
        std::fs::write(md.join("cur").join("2:2,S"), b"Subject: cur\n\n").unwrap();
        std::fs::write(md.join("tmp").join("3"), b"Subject: partial\n\n").unwrap();

        let eml = read_messages(&d.join("a.eml")).unwrap();
        assert_eq!(eml.len(), 1);
        assert!(eml[0].bytes.starts_with(b"Subject: a"));

        let mbox = read_messages(&d.join("box.mbox")).unwrap();
        let labels: Vec<_> = mbox.iter().map(|m| m.label.rsplit('/').next().unwrap().to_string()).collect();
        assert_eq!(labels, ["box.mbox#1", "box.mbox#2"]);

        // Maildir: new/ before cur/, tmp/ (deliveries in progress) never read.
        let maildir = read_messages(&md).unwrap();
        let subjects: Vec<_> = maildir.iter().map(|m| String::from_utf8_lossy(&m.bytes).into_owned()).collect();
        assert_eq!(subjects, ["Subject: new\n\n", "Subject: cur\n\n"]);

        // A directory: message files by name, Maildirs inside it, no hidden or .txt files.
        let all = read_messages(d).unwrap();
        assert_eq!(all.len(), 1 + 2 + 2, "{:?}", all.iter().map(|m| &m.label).collect::<Vec<_>>());
        assert!(all.iter().all(|m| !m.label.ends_with(".txt") && !m.label.ends_with(".hidden")));
    }

    #[test]
    fn missing_path_is_an_error_and_unreadable_members_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_messages(&dir.path().join("nope.eml")).is_err());
        std::fs::write(dir.path().join("ok.eml"), b"Subject: ok\n\n").unwrap();
        // A dangling symlink named like a message: listed, but cannot be read.
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("bad.eml")).unwrap();
        let (items, failed) = read_messages_lenient(dir.path()).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(failed.len(), 1);
        assert!(read_messages(dir.path()).is_err());
    }

    #[test]
    fn labels_tsv_skips_header_and_unknown_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.tsv");
        std::fs::write(&p, "file\tlabel\nx.eml\tspam\ny.eml\tHAM\textra\nz.eml\tmaybe\n").unwrap();
        let l = read_labels(&p).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l["x.eml"]);
        assert!(!l["y.eml"]);
        assert_eq!(label_key("some/dir/x.eml"), "x.eml");
    }

    #[test]
    fn mbox_from_line_only_after_empty_line() {
        let m = b"From a\nSubject: 1\n\nbody\nFrom here on\n\nFrom b\n\nx\n";
        let parts = split_mbox(m);
        assert_eq!(parts.len(), 2);
        assert!(parts[1].starts_with(b"From b"));
        let crlf = b"From a\r\nS: 1\r\n\r\nFrom b\r\n\r\n";
        assert_eq!(split_mbox(crlf).len(), 2);
    }
}
