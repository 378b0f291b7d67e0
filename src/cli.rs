//! Command-line definitions (clap). No I/O here: `main.rs` turns these values into work.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// popsift: a spam-filtering POP3 proxy.
///
/// Point your mail client at popsift instead of your provider; popsift relays the login,
/// reads every message's headers, applies your rule files and shows the client a mailbox
/// without the spam.
#[derive(Debug, Parser)]
#[command(name = "popsift", version, about, long_about)]
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
    /// Convert SpamAssassin .cf rules (files or directories) into one popsift rule file.
    ImportSa(ImportSaArgs),
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
    /// Config file to read `quarantine.dir` / `state_dir` from [default: popsift.yaml if present].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
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
    },
}

/// Upstream connection security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// TLS from the first byte (POP3S, usually port 995).
    Implicit,
    /// Plain connection upgraded with STLS (RFC 2595); refuses to log in if STLS fails.
    Starttls,
    /// No TLS at all. Only sensible on loopback or a trusted network.
    None,
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// YAML config file. Default: `popsift.yaml` in the current directory, if present.
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
    /// Rule file or directory of rule files (*.yaml, loaded in file-name order) [default: rules/].
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
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Rule file or directory [default: rules/].
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Rule file or directory [default: rules/].
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
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
    /// .eml files, Maildir folders, mbox files, or directories of .eml files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}
