//! `popsift import-sa`: SpamAssassin `.cf` rules into one popsift rule file.
//!
//! SpamAssassin's header rules are the largest shared body of knowledge about spam headers;
//! this lets people moving from it keep their rules (stock and `local.cf`). The work is split
//! so that everything but reading and writing files is pure and unit-tested:
//! - [`parse`]: `.cf` lines into directives, taking `if`/`ifplugin` blocks as a default
//!   SpamAssassin 4.0.1 does;
//! - [`perlre`]: Perl patterns into Rust `regex` syntax, or a reason why not;
//! - [`translate`]: directives into popsift rules, the YAML text and a report.
//!
//! This file holds the command: SpamAssassin's load order (each directory's `*.cf` sorted by
//! name, paths in the order given), writing the output, checking it loads, and the report.
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod parse;
pub mod perlre;
pub mod replace;
pub mod translate;

pub use translate::{Imported, Options, Report};

/// The result of importing some `.cf` texts: the YAML rule file and the report.
pub fn import_texts(names: &[String], texts: &[&str], opts: &Options) -> (String, Imported) {
    let mut env = parse::Env::default_sa();
    let items = parse::parse_files(texts, &mut env);
    let imported = translate::translate(&items, names, opts);
    let yaml = translate::to_yaml(&imported, names, opts);
    (yaml, imported)
}

/// The `.cf` files under the given paths, in SpamAssassin's load order: a directory's `*.cf`
/// files sorted by name (`Mail::SpamAssassin::get_cf_files_in_dir`), a file as itself.
pub fn cf_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        let md = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if md.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "cf") && f.is_file())
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Arguments of the command (see `cli::ImportSaArgs`).
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub paths: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub verbose: bool,
    pub no_threshold: bool,
    pub no_backtrack: bool,
}

/// Runs the command: 0 done, 1 the output would not load (a bug, reported), 2 unreadable input
/// or output.
pub fn run(args: &RunArgs) -> i32 {
    let files = match cf_files(&args.paths) {
        Ok(f) if f.is_empty() => {
            eprintln!("import-sa: no .cf files in {}", show_paths(&args.paths));
            return 2;
        }
        Ok(f) => f,
        Err(e) => {
            eprintln!("import-sa: {e}");
            return 2;
        }
    };
    let mut texts = Vec::new();
    for f in &files {
        match std::fs::read(f) {
            // Rule files are mostly ASCII; a stray Latin-1 byte in a comment must not stop us.
            Ok(b) => texts.push(String::from_utf8_lossy(&b).into_owned()),
            Err(e) => {
                eprintln!("import-sa: {}: {e}", f.display());
                return 2;
            }
        }
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let opts = Options {
        no_threshold: args.no_threshold,
        sources: args.paths.iter().map(|p| p.display().to_string()).collect(),
        no_backtrack: args.no_backtrack,
        keep_unreferenced: false,
    };
    let (yaml, imported) = import_texts(&names, &refs, &opts);
    // The output must pass `popsift check` on its own.
    let check_path = args.output.clone().unwrap_or_else(|| PathBuf::from("60-spamassassin.yaml"));
    if let Err(e) = crate::rules::compile::load_str(&check_path, &yaml, &crate::rules::EngineOptions::default()) {
        eprintln!("import-sa: the generated rules do not load (please report this):\n{e}");
        return 1;
    }
    match &args.output {
        Some(out) => {
            if let Err(e) = write_atomic(out, yaml.as_bytes()) {
                eprintln!("import-sa: {}: {e}", out.display());
                return 2;
            }
        }
        None => {
            let mut so = std::io::stdout().lock();
            if so.write_all(yaml.as_bytes()).and_then(|_| so.flush()).is_err() {
                return 2;
            }
        }
    }
    eprint!("{}", report_text(&imported.report, &names, args.verbose));
    0
}

/// The report printed on stderr.
pub fn report_text(r: &Report, names: &[String], verbose: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let pct = if r.header_rules == 0 { 0.0 } else { 100.0 * r.header_imported as f64 / r.header_rules as f64 };
    let _ = writeln!(
        s,
        "import-sa: {} rules imported ({} rewritten), {} skipped",
        r.imported,
        r.translated,
        r.skipped.len()
    );
    let _ = writeln!(
        s,
        "import-sa: header rules (not eval:): {} of {} imported ({pct:.1}%)",
        r.header_imported, r.header_rules
    );
    let run = r.header_rules - r.header_disabled;
    let pct_run = if run == 0 { 0.0 } else { 100.0 * r.header_imported as f64 / run as f64 };
    let _ = writeln!(
        s,
        "import-sa: of the {run} header rules SpamAssassin runs (score not 0 in set 0): {pct_run:.1}% imported"
    );
    if r.unreferenced > 0 {
        let _ = writeln!(
            s,
            "import-sa: {} `__` sub-rules dropped: no imported rule or meta refers to them (the header-rule shares above count them as imported)",
            r.unreferenced
        );
    }
    for (reason, n) in r.by_reason() {
        let _ = writeln!(s, "  skipped {n:5}  {reason}");
    }
    if verbose {
        for k in &r.skipped {
            let detail = k.skip.detail().map(|d| format!(": {d}")).unwrap_or_default();
            let _ = writeln!(s, "{}:{}: {} skipped: {}{detail}", names[k.file], k.line, k.name, k.skip.reason());
        }
    } else if !r.skipped.is_empty() {
        let _ = writeln!(s, "  (--verbose lists file:line of each skipped rule)");
    }
    s
}

fn show_paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Writes through a temporary file in the same directory and renames it into place, so a
/// reader (popsift's rule reloader) never sees half a file.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A dot name and a non-.yaml suffix: the reloader ignores it while it is being written.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
