//! Command-line definitions (clap). No I/O here: `main.rs` turns these values into work
//! (see [`crate::cmd`]); `serve`'s flags become a [`crate::config::Overrides`].
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;
pub use crate::config::UpstreamTls;

/// popsift: a spam-filtering POP3 proxy.
///
/// Point your mail client at popsift instead of your provider; popsift relays the login,
/// reads every message's headers, applies your rule files and shows the client a mailbox
/// without the spam.
/// Shown under `--help`; the values are [`crate::cmd::Exit`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  rule or data errors (`check`/`scan` found rule errors; `quarantine`: no such message)
  2  usage, config or input errors (bad flags or config file, unreadable paths, serve could not start)

Config and rules are found by --config/--rules, else ./popsift.yaml and ./rules/, else
$XDG_CONFIG_HOME/popsift/ (~/.config/popsift/), else /etc/popsift/ ($POPSIFT_SYSTEM_CONFIG_DIR
when set); without rules on disk the shipped rules built into popsift are used.
`popsift init` writes an editable copy.";

#[derive(Debug, Parser)]
#[command(name = "popsift", version, about, long_about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level or filter (tracing EnvFilter syntax, e.g. `info`, `popsift=debug`).
    /// Overrides RUST_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// A directory outside the rules directory that rule and list files (or the targets of
    /// symlinks in the rules directory) may come from. Repeatable. Without it, only files
    /// inside the rules directory are read.
    #[arg(long, global = true, value_name = "DIR")]
    pub rules_allow_dir: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Check rule files and exit: 0 with a summary, 1 with every error.
    Check(CheckArgs),
    /// Evaluate rules against messages on disk (.eml files, Maildir folders, mbox files).
    Scan(ScanArgs),
    /// Look into the quarantine and restore false positives.
    Quarantine(QuarantineArgs),
    /// Teach the classifier: train messages as spam or ham, forget them, show the model.
    Train(TrainArgs),
    /// Write a commented starter popsift.yaml and a copy of the shipped rules to edit
    /// [default DIR: $XDG_CONFIG_HOME/popsift, else ~/.config/popsift]. Never overwrites.
    Init(InitArgs),
    /// Read a password on stdin and print its argon2 hash for `ui.admin_password_hash`.
    HashPassword,
    /// Convert SpamAssassin .cf rules (files or directories) into one popsift rule file.
    ImportSa(ImportSaArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write popsift.yaml and rules/ into.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Messages that are spam (.eml files, Maildir folders, mbox files, directories).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub spam: Vec<PathBuf>,
    /// Messages that are ham (wanted mail).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub ham: Vec<PathBuf>,
    /// TSV of `file name <TAB> spam|ham` (the `scan --labels` format) labelling PATHs.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Untrain the given messages instead (exactly what training them added).
    #[arg(long)]
    pub forget: bool,
    /// Train every message, not only those the model gets wrong or is unsure about.
    #[arg(long)]
    pub all: bool,
    /// Show the model's counts and its most telling tokens, then exit.
    #[arg(long)]
    pub stats: bool,
    /// Directory holding the model (bayes.redb) [default: `state_dir` from the config,
    /// else $XDG_STATE_HOME/popsift or ~/.local/state/popsift].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Rule file or directory: rules that fire become tokens [default: `rules` from the
    /// config, else rules/ on the search path; none: no rule tokens].
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Config file [default: popsift.yaml on the search path, see --help].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Messages labelled by --labels.
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportSaArgs {
    /// .cf files or directories (each directory's *.cf in name order, as SpamAssassin loads
    /// them), e.g. /usr/share/spamassassin /etc/spamassassin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Write the rule file here (atomically) instead of to stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// List every skipped rule with its file:line and reason.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Do not turn SpamAssassin's required_score into `threshold:` (keep your rules' threshold).
    #[arg(long)]
    pub no_threshold: bool,
    /// Skip patterns that need look-around or back-references instead of running them on
    /// the bounded backtracking engine: fewer rules, faster evaluation.
    #[arg(long)]
    pub no_backtrack: bool,
}

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// Quarantine directory [default: `quarantine.dir` from the config, else
    /// <state dir>/quarantine].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Config file to read `quarantine.dir` / `state_dir` from [default: popsift.yaml on the search path, see --help].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// popsift's state directory: the quarantine is <state dir>/quarantine unless --dir or
    /// the config says otherwise, and restored messages train the model in it.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub action: QuarantineAction,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// List quarantined messages: id, date, user, from, subject, score, rules.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print one message (by id or unique id prefix) exactly as the server held it.
    Show {
        id: String,
        /// Include popsift's X-Popsift-* fields (why it was quarantined).
        #[arg(long)]
        with_meta: bool,
    },
    /// Deliver a message back: to an .eml file, a Maildir or an mbox of your choice.
    Restore {
        id: String,
        /// Write the message to this file (.eml).
        #[arg(long, group = "dest")]
        to_eml: Option<PathBuf>,
        /// Deliver into this Maildir (created if missing), e.g. your mail client's local folder.
        #[arg(long, group = "dest")]
        to_maildir: Option<PathBuf>,
        /// Append to this mbox file.
        #[arg(long, group = "dest")]
        to_mbox: Option<PathBuf>,
        /// Remove it from the quarantine after a successful restore.
        #[arg(long)]
        remove: bool,
        /// Do not train the classifier with it as ham (by default a restored message, a
        /// false positive, is trained as ham; config `bayes.train_restored`).
        #[arg(long)]
        no_train: bool,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// YAML config file [default: popsift.yaml in ., $XDG_CONFIG_HOME/popsift, /etc/popsift].
    /// Flags given on the command line override the file's first listener.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address to accept POP3 clients on [default: 127.0.0.1:1110].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The real POP3 server, HOST:PORT (e.g. pop.example.com:995).
    #[arg(long)]
    pub upstream: Option<String>,
    /// How to secure the upstream connection [default: implicit when the port is 995,
    /// else starttls].
    #[arg(long, value_enum)]
    pub upstream_tls: Option<UpstreamTls>,
    /// Extra trusted root certificate(s) for the upstream, PEM. Added to the platform and
    /// webpki roots; certificates are always verified.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Rule file or directory of rule files (*.yaml, loaded in file-name order) [default:
    /// `rules:` in the config, else rules/ found on the search path, else the built-in rules].
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Prometheus metrics endpoint address, or `off` [default: 127.0.0.1:9110].
    #[arg(long)]
    pub metrics: Option<String>,
    /// Directory for popsift's state (quarantine, header cache)
    /// [default: $XDG_STATE_HOME/popsift or ~/.local/state/popsift].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Decide and log everything but change nothing: no hiding, no deleting.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve the review page on ADDR (loopback, or any address with `ui.tls` configured).
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Rule file or directory [default: `rules:` in --config, else rules/ on the search
    /// path, else the built-in rules].
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Also check this config file (every key, as `serve` would) and use its `rules:` and
    /// `rules_per_user:`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Rule file or directory [default: `rules:` in the config, else rules/ on the search
    /// path, else the built-in rules].
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// One JSON object per message (keys: path, verdict, score, action, rules).
    #[arg(long)]
    pub json: bool,
    /// TSV of `file name <TAB> spam|ham` (a header line is skipped); prints the share of
    /// spam caught and of ham flagged.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Action for messages that are spam by score (allow, tag, hide, delete, quarantine).
    #[arg(long, default_value = "tag")]
    pub spam_action: String,
    /// Print rule compile time and mean evaluation time per message (parse + decode + rules).
    #[arg(long)]
    pub timing: bool,
    /// Evaluate each message this many times (for --timing).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Directory holding the classifier model (bayes.redb) [default: `state_dir` from the
    /// config, else $XDG_STATE_HOME/popsift or ~/.local/state/popsift].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Config file for `state_dir` and `bayes:` [default: popsift.yaml on the search path, see --help].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// .eml files, Maildir folders, mbox files, or directories of .eml files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

impl From<&ServeArgs> for Overrides {
    fn from(a: &ServeArgs) -> Overrides {
        Overrides {
            listen: a.listen,
            upstream: a.upstream.clone(),
            upstream_tls: a.upstream_tls,
            upstream_ca: a.upstream_ca.clone(),
            rules: a.rules.clone(),
            metrics: a.metrics.clone(),
            state_dir: a.state_dir.clone(),
            dry_run: a.dry_run,
            ui: a.ui,
        }
    }
}
