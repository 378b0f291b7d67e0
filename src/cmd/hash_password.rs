//! `popsift hash-password`: reads a password on stdin (one line; the newline is not part of
//! it) and prints its argon2id hash for `ui.admin_password_hash`. The password never
//! appears on the command line, so it stays out of shell history and `ps`.
use std::io::{BufRead, Write};

use super::Exit;

/// `popsift hash-password`.
pub fn run() -> Exit {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("popsift hash-password: reading stdin: {e}");
        return Exit::Usage;
    }
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if password.is_empty() {
        eprintln!("popsift hash-password: give the password on stdin (an empty password is refused)");
        return Exit::Usage;
    }
    match crate::ui::auth::hash_password(password) {
        Ok(h) => {
            let _ = writeln!(std::io::stdout(), "{h}");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("popsift hash-password: {e}");
            Exit::Usage
        }
    }
}
