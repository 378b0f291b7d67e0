//! The monitoring files in `deploy/` are valid and agree with the code:
//!
//! - `promtool check config` / `check rules` / `test rules` accept the scrape config, the alert
//!   rules and their unit tests (promtool comes from Debian's `prometheus` package; a missing
//!   promtool fails these tests, it never skips them);
//! - the Grafana dashboard parses, has the structure Grafana's importer expects, and every
//!   PromQL expression in it is accepted by promtool (as a recording rule, Grafana variables
//!   substituted);
//! - every `popsift_*` metric and every label used by the dashboard, the alerts and the example
//!   queries in `deploy/README.md` exists in `popsift::metrics::METRICS` (histograms also as
//!   `_bucket`, `_sum`, `_count`), and the README examples parse;
//! - every sample popsift config (`deploy/**/popsift*.yaml`) is a valid config as `serve` reads
//!   it, and the systemd unit runs the packaged binary as the `popsift` user on
//!   `/etc/popsift/popsift.yaml`;
//! - the fail2ban jail and filter (`deploy/fail2ban/`) pass `fail2ban-client -t` in a config
//!   directory of their own (Debian's `fail2ban`; missing, the test fails).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use popsift::metrics::{MetricKind, METRICS};
use serde_json::Value;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): install Debian package `prometheus`; CI needs it"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn promtool_accepts_scrape_config_and_its_rule_files() {
    let out = promtool(&["check", "config", deploy("prometheus.yml").to_str().unwrap()]);
    assert!(out.contains("1 rule files found"), "alerts.yml not referenced?\n{out}");
}

#[test]
fn promtool_accepts_alert_rules() {
    promtool(&["check", "rules", deploy("alerts.yml").to_str().unwrap()]);
}

#[test]
fn alert_rules_unit_tests_pass() {
    promtool(&["test", "rules", deploy("alerts_test.yml").to_str().unwrap()]);
}

#[test]
fn scrape_config_targets_the_default_endpoint() {
    let text = std::fs::read_to_string(deploy("prometheus.yml")).unwrap();
    let cfg: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let jobs = cfg["scrape_configs"].as_sequence().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("popsift"))
        .expect("a job named popsift (the dashboard and alerts use job=\"popsift\")");
    let targets = &job["static_configs"][0]["targets"];
    assert_eq!(targets[0].as_str(), Some("127.0.0.1:9110"));
}

// ---------------------------------------------------------------------------------------------
// PromQL name and label checks
// ---------------------------------------------------------------------------------------------

/// What a PromQL expression references.
#[derive(Debug, Default)]
struct Refs {
    /// Metric names (identifiers followed by `{`, or bare identifiers that are not functions
    /// or keywords).
    metrics: BTreeSet<String>,
    /// Label names in matchers, grouped by the metric they follow.
    matcher_labels: Vec<(String, String)>,
    /// Label names in `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`,
    /// `group_right (…)`.
    grouping_labels: BTreeSet<String>,
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2", // aggregation operators may precede `by (…)`:
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// A small PromQL scanner: enough to find metric names and label names, not a parser (promtool
/// does the parsing).
fn scan(expr: &str) -> Refs {
    let b = expr.as_bytes();
    let mut refs = Refs::default();
    let mut i = 0;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    let skip_string = |j: usize| {
        let q = b[j];
        let mut k = j + 1;
        while k < b.len() && b[k] != q {
            if b[k] == b'\\' {
                k += 1;
            }
            k += 1;
        }
        k + 1
    };
    // Reads `name op "value", …}` starting after `{`; returns the label names and the index
    // after `}`.
    let read_matchers = |mut j: usize| {
        let mut names = Vec::new();
        loop {
            j = skip_ws(j);
            if j >= b.len() || b[j] == b'}' {
                return (names, j + 1);
            }
            if b[j] == b',' {
                j += 1;
                continue;
            }
            let s = j;
            while j < b.len() && ident_char(b[j]) {
                j += 1;
            }
            names.push(expr[s..j].to_owned());
            while j < b.len() && b[j] != b'"' && b[j] != b'\'' && b[j] != b'`' {
                j += 1;
            }
            j = skip_string(j);
        }
    };
    let read_grouping = |mut j: usize| {
        let mut names = Vec::new();
        j = skip_ws(j) + 1; // '('
        loop {
            j = skip_ws(j);
            if j >= b.len() || b[j] == b')' {
                return (names, j + 1);
            }
            if b[j] == b',' {
                j += 1;
                continue;
            }
            let s = j;
            while j < b.len() && ident_char(b[j]) {
                j += 1;
            }
            assert!(j > s, "unexpected {:?} in grouping of {expr}", b[j] as char);
            names.push(expr[s..j].to_owned());
        }
    };

    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(i);
        } else if c == b'[' {
            // Range or subquery duration.
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' {
            // Numbers and durations (5m, 1e3, 0x1f).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'{' {
            let (names, next) = read_matchers(i + 1);
            refs.matcher_labels.extend(names.into_iter().map(|n| (String::new(), n)));
            i = next;
        } else if ident_start(c) {
            let s = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let word = &expr[s..i];
            let after = skip_ws(i);
            let next = b.get(after).copied();
            let lower = word.to_ascii_lowercase();
            if matches!(lower.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right") {
                if next == Some(b'(') {
                    let (names, n) = read_grouping(after);
                    refs.grouping_labels.extend(names);
                    i = n;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || next == Some(b'(') {
                // Keyword or function call.
            } else {
                refs.metrics.insert(word.to_owned());
                if next == Some(b'{') {
                    let (names, n) = read_matchers(after + 1);
                    refs.matcher_labels.extend(names.into_iter().map(|l| (word.to_owned(), l)));
                    i = n;
                }
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// Labels every scraped series has (target labels) or that a histogram adds.
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// Non-popsift metrics a dashboard or alert may use.
const FOREIGN_METRICS: &[&str] = &["up"];

/// The metric definition behind an exposed series name (histograms also as `_bucket` etc.).
fn resolve(name: &str) -> Option<(&'static popsift::metrics::MetricDef, bool)> {
    if let Some(m) = METRICS.iter().find(|m| m.name == name) {
        return Some((m, false));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let m = METRICS.iter().find(|m| m.name == base && m.kind == MetricKind::Histogram)?;
        Some((m, *suffix == "_bucket"))
    })
}

/// Checks one expression; returns a list of problems.
fn check_expr(context: &str, expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let refs = scan(expr);
    if refs.metrics.is_empty() {
        problems.push(format!("{context}: references no metric: {expr}"));
    }
    let mut known_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for name in &refs.metrics {
        if FOREIGN_METRICS.contains(&name.as_str()) {
            continue;
        }
        match resolve(name) {
            Some((m, bucket)) => {
                known_labels.extend(m.labels.iter().copied());
                if bucket {
                    known_labels.insert("le");
                }
            }
            None => problems.push(format!("{context}: unknown metric {name} in: {expr}")),
        }
    }
    for (metric, label) in &refs.matcher_labels {
        let ok = TARGET_LABELS.contains(&label.as_str())
            || FOREIGN_METRICS.contains(&metric.as_str())
            || resolve(metric)
                .is_some_and(|(m, bucket)| m.labels.contains(&label.as_str()) || (bucket && label == "le"));
        if !ok {
            problems.push(format!("{context}: {metric} has no label {label:?}: {expr}"));
        }
    }
    for label in &refs.grouping_labels {
        if !known_labels.contains(label.as_str()) {
            problems.push(format!("{context}: grouping by unknown label {label:?}: {expr}"));
        }
    }
    problems
}

#[test]
fn scanner_finds_names_and_labels() {
    let r = scan(
        r#"histogram_quantile(0.95, sum by (le, instance) (rate(popsift_scan_duration_seconds_bucket{job=~"$job",instance=~"a\"}"}[5m]))) > 10 and on (instance) up == 1"#,
    );
    assert_eq!(
        r.metrics.iter().map(String::as_str).collect::<Vec<_>>(),
        ["popsift_scan_duration_seconds_bucket", "up"]
    );
    assert_eq!(r.grouping_labels.iter().map(String::as_str).collect::<Vec<_>>(), ["instance", "le"]);
    assert_eq!(r.matcher_labels.len(), 2);

    assert!(check_expr("t", "rate(popsift_sessions_total{result=\"ok\"}[5m])").is_empty());
    assert!(check_expr("t", "sum by (le) (popsift_scan_duration_seconds_bucket)").is_empty());
    assert_eq!(check_expr("t", "rate(popsift_session_total[5m])").len(), 1);
    assert_eq!(check_expr("t", "popsift_sessions_total{verdict=\"spam\"}").len(), 1);
    assert_eq!(check_expr("t", "sum by (user) (popsift_sessions_total)").len(), 1);
    assert_eq!(check_expr("t", "popsift_sessions_active_bucket").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Alerts
// ---------------------------------------------------------------------------------------------

#[test]
fn alert_exprs_reference_only_known_metrics_and_labels() {
    let text = std::fs::read_to_string(deploy("alerts.yml")).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let mut problems = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            alerts.insert(name.to_owned());
            let expr = rule["expr"].as_str().expect("expr");
            problems.extend(check_expr(name, expr));
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}: severity label");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}: summary");
            assert!(rule["annotations"]["description"].as_str().is_some(), "{name}: description");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for required in [
        "PopsiftDown",
        "PopsiftUpstreamErrorsRising",
        "PopsiftRulesReloadFailing",
        "PopsiftRulesStale",
        "PopsiftNoSessions",
        "PopsiftScanSlow",
    ] {
        assert!(alerts.contains(required), "missing alert {required}");
    }
    // Every alert has a promtool unit test.
    let tests = std::fs::read_to_string(deploy("alerts_test.yml")).unwrap();
    for a in &alerts {
        assert!(tests.contains(&format!("alertname: {a}\n")), "no unit test for {a}");
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("grafana-dashboard.json is valid JSON")
}

/// (panel title, expr) for every target of every non-row panel, rows' nested panels included.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        if p["type"] == "row" {
            stack.extend(p["panels"].as_array().into_iter().flatten());
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), t["expr"].as_str().unwrap_or_default().to_owned()));
        }
    }
    out
}

#[test]
fn dashboard_has_importable_structure() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["id"].is_null(), "exported dashboards carry no database id");

    // The datasource is chosen at import time or from the dropdown: a templated variable.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars.iter().find(|v| v["name"] == "DS_PROMETHEUS").expect("a DS_PROMETHEUS variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "variable {}", v["name"]);
        let q = v["query"]["query"].as_str().expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.rsplit_once(','))
            .map(|(sel, _)| sel)
            .expect("label_values(selector, label)");
        let problems = check_expr(&format!("variable {}", v["name"]), inner);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    let mut graph_panels = 0;
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate id in {title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("gridPos.x"),
            g["y"].as_u64().expect("gridPos.y"),
            g["w"].as_u64().expect("gridPos.w"),
            g["h"].as_u64().expect("gridPos.h"),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for &(ox, oy, ow, oh, ref other) in &boxes {
            let overlap = x < ox + ow && ox < x + w && y < oy + oh && oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((x, y, w, h, title.to_owned()));
        if p["type"] == "row" {
            continue;
        }
        graph_panels += 1;
        assert!(
            ["timeseries", "stat", "bargauge", "gauge", "table"].contains(&p["type"].as_str().unwrap()),
            "{title}: panel type {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}: refId twice");
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title}");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
    }
    assert!(graph_panels >= 8, "only {graph_panels} panels");
}

#[test]
fn dashboard_covers_the_issue_and_uses_only_known_metrics() {
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        problems.extend(check_expr(title, expr));
        used.extend(scan(expr).metrics);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let all = exprs.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("\n");
    // What issue 5 asks the dashboard to show.
    for needle in [
        "popsift_sessions_total",
        "popsift_sessions_active",
        "by (verdict, action) (rate(popsift_messages_total",
        "topk(10, sum by (rule) (increase(popsift_rule_matches_total",
        "histogram_quantile(0.5, sum by (le) (rate(popsift_scan_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(popsift_scan_duration_seconds_bucket",
        "by (kind) (rate(popsift_upstream_errors_total",
        "popsift_bytes_total",
        "popsift_rules_loaded",
        "popsift_rules_last_reload_successful",
    ] {
        assert!(all.contains(needle), "dashboard lacks {needle}");
    }
    // Counters are only ever shown through rate()/increase(), never raw.
    for (title, expr) in &exprs {
        for m in METRICS.iter().filter(|m| m.kind == MetricKind::Counter) {
            for (pos, _) in expr.match_indices(m.name) {
                let before = &expr[..pos];
                assert!(
                    before.ends_with("rate(") || before.ends_with("increase("),
                    "{title}: raw counter {} in {expr}",
                    m.name
                );
            }
        }
    }
}

/// Grafana's built-in and dashboard variables, replaced by values PromQL accepts.
fn substitute_grafana_vars(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// Runs `promtool check rules` on the expressions written as recording rules.
fn promtool_parses(exprs: &[(String, String)]) {
    let mut yaml = String::from("groups:\n  - name: exprs\n    rules:\n");
    for (i, (context, expr)) in exprs.iter().enumerate() {
        let expr = substitute_grafana_vars(expr);
        assert!(!expr.contains('$'), "{context}: unknown variable in {expr}");
        yaml.push_str(&format!("      - record: check:expr_{i}\n"));
        yaml.push_str(&format!("        expr: {}\n", serde_json::to_string(&expr).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exprs.yml");
    std::fs::write(&path, &yaml).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}

#[test]
fn promtool_parses_every_dashboard_expr() {
    promtool_parses(&dashboard_exprs(&dashboard()));
}

/// The example queries in `deploy/README.md` (```promql blocks, one query per line).
fn readme_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_block = false;
    let mut comment = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```promql";
            continue;
        }
        if !in_block || line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.trim().strip_prefix('#') {
            comment = format!("README: {}", c.trim());
        } else {
            out.push((comment.clone(), line.trim().to_owned()));
        }
    }
    out
}

#[test]
fn readme_examples_are_valid_and_use_known_metrics() {
    let exprs = readme_exprs();
    assert!(exprs.len() >= 5, "README has {} example queries", exprs.len());
    let problems: Vec<String> = exprs.iter().flat_map(|(c, e)| check_expr(c, e)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    promtool_parses(&exprs);
}

// ---------------------------------------------------------------------------------------------
// Sample popsift configs and the systemd unit
// ---------------------------------------------------------------------------------------------

/// Every `popsift*.yaml` under `deploy/`, sorted.
fn sample_configs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![deploy("")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                dirs.push(p);
            } else if name.starts_with("popsift") && name.ends_with(".yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Parses and checks a sample config exactly as `serve --config` does (rules path as given).
fn build(path: &Path) -> popsift::config::Config {
    let file = popsift::config::ConfigFile::load(path).unwrap_or_else(|e| panic!("{e}"));
    popsift::config::Config::build(file, popsift::config::Overrides::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_sample_config_is_a_valid_config() {
    let configs = sample_configs();
    let names: Vec<String> =
        configs.iter().map(|p| p.strip_prefix(deploy("")).unwrap().display().to_string()).collect();
    for want in ["popsift-laptop.yaml", "popsift-provider.yaml", "debian/popsift.yaml"] {
        assert!(names.iter().any(|n| n == want), "deploy/{want} missing: {names:?}");
    }
    for p in &configs {
        build(p);
    }
}

#[test]
fn laptop_config_has_one_listener_for_every_account() {
    use popsift::config::UpstreamTls;
    let c = build(&deploy("popsift-laptop.yaml"));
    assert_eq!(c.listeners.len(), 1, "one port, the server in the user name");
    let l = &c.listeners[0];
    assert!(l.listen.ip().is_loopback(), "a laptop listens on loopback only");
    let from_user = l.upstream_from_user.as_ref().expect("upstream_from_user");
    assert!(from_user.allow.len() >= 3, "{:?}", from_user.allow);
    let gmx = from_user.route("pop.gmx.net:995:jane.doe").unwrap();
    assert_eq!(
        (gmx.upstream.display(), gmx.upstream.tls, gmx.user.as_str()),
        ("pop.gmx.net:995".into(), UpstreamTls::Implicit, "jane.doe")
    );
    let own = from_user.route("mail.example.org:jane").unwrap();
    assert_eq!((own.upstream.port, own.upstream.tls), (110, UpstreamTls::Starttls));
    assert!(from_user.route("evil.example:995:jane").is_err(), "not an open relay");
}

#[test]
fn provider_config_names_the_edge_keys_and_per_mailbox_rules() {
    let c = build(&deploy("popsift-provider.yaml"));
    let per_user = c.rules_per_user.as_ref().expect("per-mailbox rules on");
    assert!(per_user.dir.starts_with(&c.state_dir), "per-mailbox rules must be writable by the service");
    assert!(!c.listeners[0].listen.ip().is_loopback(), "reached through HAProxy from another host");
    // TLS to the clients and the PROXY protocol are listener keys added separately: they are
    // in the sample, commented out, until this popsift parses them.
    let text = std::fs::read_to_string(deploy("popsift-provider.yaml")).unwrap();
    for key in ["tls:", "proxy_protocol:"] {
        let line = text.lines().find(|l| l.trim_start().trim_start_matches('#').trim_start().starts_with(key));
        let line = line.unwrap_or_else(|| panic!("no {key} line"));
        let uncommented = line.replacen("# ", "", 1);
        let with_key = text.replace(line, &uncommented);
        let parsed = popsift::config::ConfigFile::parse(&with_key, Path::new("provider.yaml"));
        // Either refused as unknown (before the edge work lands) or accepted (after it):
        // never a YAML syntax error from the sample's own text.
        if let Err(e) = parsed {
            assert!(e.to_string().contains(&format!("unknown field `{}`", key.trim_end_matches(':'))), "{e}");
        }
    }
}

#[test]
fn systemd_unit_runs_the_packaged_binary_as_the_popsift_user() {
    let unit = std::fs::read_to_string(deploy("popsift.service")).unwrap();
    let value = |key: &str| {
        let mut lines = unit.lines();
        while let Some(l) = lines.next() {
            if let Some(rest) = l.strip_prefix(&format!("{key}=")) {
                let mut v = rest.to_string();
                let mut cur = l.to_string();
                while cur.ends_with('\\') {
                    v.pop();
                    cur = lines.next().unwrap_or_default().to_string();
                    v.push_str(&cur);
                }
                return Some(v.trim_end_matches('\\').to_string());
            }
        }
        None
    };
    assert_eq!(value("User").as_deref(), Some("popsift"));
    assert_eq!(value("Group").as_deref(), Some("popsift"));
    assert_eq!(value("StateDirectory").as_deref(), Some("popsift"));
    assert_eq!(value("DynamicUser"), None, "the package creates a static system user");
    let exec = value("ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/bin/popsift "), "{exec}");
    assert!(exec.contains("serve --config /etc/popsift/popsift.yaml"), "{exec}");
    assert_eq!(value("ExecReload").as_deref(), Some("/bin/kill -HUP $MAINPID"));
    // The config the unit names is the one the package installs.
    let debian = build(&deploy("debian/popsift.yaml"));
    assert_eq!(debian.rules, Path::new("/etc/popsift/rules"));
    assert_eq!(debian.state_dir, Path::new("/var/lib/popsift"));
}

/// `fail2ban-client -c DIR -t` over the shipped jail and filter, in a temporary config
/// directory holding only them plus the least `fail2ban.conf` / `jail.conf` / action they
/// need (so `/etc/fail2ban` is never read). `-d` then shows what the server would be told:
/// the jail really uses popsift's filter with both its lines.
#[test]
fn fail2ban_jail_and_filter_pass_fail2ban_client_test() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["filter.d", "jail.d", "action.d"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    std::fs::copy(deploy("fail2ban/filter.d/popsift.conf"), d.join("filter.d/popsift.conf")).unwrap();
    std::fs::copy(deploy("fail2ban/jail.d/popsift.conf"), d.join("jail.d/popsift.conf")).unwrap();
    std::fs::write(
        d.join("fail2ban.conf"),
        format!(
            "[Definition]\nloglevel = INFO\nlogtarget = STDERR\nsocket = {0}/f2b.sock\npidfile = {0}/f2b.pid\ndbfile = :memory:\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("jail.conf"), "[DEFAULT]\nbanaction = noop\naction = %(banaction)s\n").unwrap();
    std::fs::write(d.join("action.d/noop.conf"), "[Definition]\nactionban = true\nactionunban = true\n").unwrap();
    let run = |flag: &str| {
        let out = Command::new("fail2ban-client").arg("-c").arg(d).arg(flag).output().unwrap_or_else(|e| {
            panic!("cannot run fail2ban-client ({e}): install Debian package `fail2ban`; CI needs it")
        });
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "fail2ban-client {flag} failed: {text}");
        text
    };
    let tested = run("-t");
    assert!(tested.contains("configuration test is successful"), "{tested}");
    let dump = run("-d");
    assert!(dump.contains("['add', 'popsift',"), "the jail is enabled: {dump}");
    let regexes = dump.lines().find(|l| l.contains("'popsift', 'addfailregex'")).unwrap_or_else(|| panic!("{dump}"));
    assert_eq!(regexes.matches("login failed: client=<ADDR> user=").count(), 2, "{regexes}");
}
