//! The Debian package (issue 14): built with `cargo deb` from the metadata in `Cargo.toml`,
//! installed on this machine with `dpkg -i`, checked as installed, then removed and purged.
//!
//! - Needs root (dpkg) and `cargo-deb` (`.ci/run` installs it); fails, never skips, without.
//! - Packs the binary `cargo test` already built (`--profile dev --no-build`), so CI does not
//!   compile popsift a second time in release mode; the package's layout does not depend on
//!   the profile.
//! - Leaves the machine as it found it: it refuses to start when popsift is installed or its
//!   paths or user exist, and a guard purges the package and removes the user and directories
//!   it created if the test fails midway.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "popsift";
const CONFIG: &str = "/etc/popsift/popsift.yaml";
const ETC: &str = "/etc/popsift";
const STATE: &str = "/var/lib/popsift";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).current_dir("/").output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(o.status.success(), "{program} {args:?} failed ({}):\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `dpkg-query`'s status of the package, `None` when dpkg knows nothing of it.
fn status() -> Option<String> {
    let o = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !s.is_empty() && s != "unknown ok not-installed").then_some(s)
}

fn passwd_entry(name: &str) -> Option<Vec<String>> {
    let o = run("getent", &["passwd", name]);
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().split(':').map(str::to_string).collect())
}

fn group_exists(name: &str) -> bool {
    run("getent", &["group", name]).status.success()
}

/// Undoes whatever the test did, also when it panics: purge the package, then remove what
/// the package would have removed (user, group, directories), which did not exist before.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if status().is_some() {
            let o = run("dpkg", &["--purge", PACKAGE]);
            if !o.status.success() {
                eprintln!("cleanup: dpkg --purge failed: {}", text(&o));
                // A broken maintainer script must not leave the package half-installed.
                let _ = run("dpkg", &["--purge", "--force-remove-reinstreq", "--force-all", PACKAGE]);
            }
        }
        if passwd_entry(PACKAGE).is_some() {
            let _ = run("userdel", &[PACKAGE]);
        }
        if group_exists(PACKAGE) {
            let _ = run("groupdel", &[PACKAGE]);
        }
        for d in [ETC, STATE] {
            if Path::new(d).exists() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

fn unit_path() -> Option<PathBuf> {
    ["/lib/systemd/system/popsift.service", "/usr/lib/systemd/system/popsift.service"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn package_builds_installs_checks_and_purges_without_a_trace() {
    assert_eq!(effective_uid(), 0, "the Debian package test installs packages: run it as root (CI does)");
    // The machine must not have popsift already: this test installs and purges it.
    assert_eq!(status(), None, "popsift is installed on this machine; the test would remove it. Purge it first.");
    for p in [ETC, STATE] {
        assert!(!Path::new(p).exists(), "{p} exists; the test would delete it. Move it away first.");
    }
    assert!(passwd_entry(PACKAGE).is_none() && !group_exists(PACKAGE), "a `popsift` user or group exists already");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let version = Command::new(&cargo).args(["deb", "--version"]).output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: `cargo install cargo-deb --locked` (.ci/run does)"
    );

    // Build from the binary `cargo test` already made.
    let out = tempfile::tempdir().unwrap();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let bin = Path::new(env!("CARGO_BIN_EXE_popsift"));
    assert!(bin.exists());
    let built = Command::new(&cargo)
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "--output"])
        .arg(out.path())
        .current_dir(manifest)
        .output()
        .expect("run cargo deb");
    assert!(built.status.success(), "cargo deb failed:\n{}", text(&built));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in the output directory");
    let deb_s = deb.to_str().unwrap();
    let control = ok("dpkg-deb", &["--field", deb_s, "Package", "Depends", "Section"]);
    assert!(control.contains("Package: popsift") && control.contains("adduser"), "{control}");
    let contents = ok("dpkg-deb", &["--contents", deb_s]);
    for want in
        ["./usr/bin/popsift", "./etc/popsift/popsift.yaml", "./etc/popsift/rules/20-subject.yaml", "popsift.service"]
    {
        assert!(contents.contains(want), "{want} not in the package:\n{contents}");
    }

    let _cleanup = Cleanup;
    ok("dpkg", &["-i", deb_s]);
    assert_eq!(status().as_deref(), Some("install ok installed"));

    // Conffiles: the config and every shipped rule file.
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(conffiles.contains(&format!(" {CONFIG} ")), "{conffiles}");
    let shipped: Vec<String> = std::fs::read_dir(Path::new(manifest).join("rules"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert!(!shipped.is_empty());
    for f in &shipped {
        assert!(conffiles.contains(&format!(" /etc/popsift/rules/{f} ")), "{f} is no conffile:\n{conffiles}");
    }

    // The system user and its state directory.
    let user = passwd_entry(PACKAGE).expect("postinst creates the popsift user");
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid < 1000, "a system user: uid {uid}");
    assert_eq!(user[5], STATE, "home");
    assert!(user[6].ends_with("nologin"), "shell {}", user[6]);
    assert!(group_exists(PACKAGE));
    let meta = std::fs::metadata(STATE).expect("postinst creates the state directory");
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), uid, "{STATE} owned by popsift");
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
    let users_dir = Path::new(STATE).join("users");
    assert_eq!(std::fs::metadata(&users_dir).expect("per-mailbox rules directory").uid(), uid);

    // The unit, as in deploy/.
    let unit = unit_path().expect("the systemd unit is installed");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        std::fs::read_to_string(Path::new(manifest).join("deploy/popsift.service")).unwrap()
    );

    // systemd's own check of the unit (its binary and user exist now). `.ci/run` installs
    // systemd for it; a missing `systemd-analyze` fails the test rather than skip the check.
    assert!(
        Path::new("/usr/bin/systemd-analyze").exists(),
        "`systemd-analyze` not found: install the Debian package `systemd` (`.ci/run` does)"
    );
    ok("systemd-analyze", &["verify", unit.to_str().unwrap()]);

    // `popsift check` on the installed config, as the service user would run it.
    let check = run("runuser", &["-u", PACKAGE, "--", "/usr/bin/popsift", "check", "--config", CONFIG]);
    let check_out = text(&check);
    assert!(check.status.success(), "popsift check on the installed config:\n{check_out}");
    assert!(check_out.contains(&format!("config: {CONFIG} OK")), "{check_out}");
    assert!(check_out.contains(&format!("in {} files OK", shipped.len())), "{check_out}");
    // The service user can write per-mailbox rules (the review page's allowlist) but not /etc.
    let probe = users_dir.join("probe@localhost");
    ok("runuser", &["-u", PACKAGE, "--", "mkdir", probe.to_str().unwrap()]);
    assert!(!run("runuser", &["-u", PACKAGE, "--", "touch", "/etc/popsift/rules/x.yaml"]).status.success());

    // Remove: the program goes, the (edited) config and the state stay.
    let mut cfg = std::fs::read_to_string(CONFIG).unwrap();
    cfg.push_str("# local edit\n");
    std::fs::write(CONFIG, &cfg).unwrap();
    ok("dpkg", &["-r", PACKAGE]);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    assert!(!Path::new("/usr/bin/popsift").exists());
    assert!(unit_path().is_none());
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), cfg, "remove keeps an edited conffile");
    assert!(Path::new(STATE).is_dir());

    // Purge: nothing is left.
    ok("dpkg", &["-P", PACKAGE]);
    assert_eq!(status(), None);
    assert!(!Path::new(ETC).exists(), "{ETC} left after purge");
    assert!(!Path::new(STATE).exists(), "{STATE} left after purge");
    assert!(passwd_entry(PACKAGE).is_none(), "user left after purge");
    assert!(!group_exists(PACKAGE), "group left after purge");
}

/// The effective uid, from `/proc/self/status` (the crate forbids `unsafe`, so no libc call).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid: line");
    line.split_whitespace().nth(2).expect("effective uid").parse().unwrap()
}
