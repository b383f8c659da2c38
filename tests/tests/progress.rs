//! Progress on the real binaries: `dth::progress` records in the log when no bar is drawn, none with --quiet,
//! and the bar on a terminal with log lines written whole above it.

use std::process::{Command, Stdio};
use std::time::Duration;

use dth_tests::*;
use serde_json::{json, Value};

/// The `dth::progress` records of a JSON log.
fn records(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "dth::progress")
        .collect()
}

/// The one record with `last` set, which must be the final one.
fn last(rs: &[Value], log: &str) -> Value {
    let finals: Vec<_> = rs.iter().filter(|r| r["last"] == true).collect();
    assert_eq!(finals.len(), 1, "one final record expected:\n{log}");
    assert_eq!(
        rs.last(),
        Some(finals[0]),
        "the final record is the last:\n{log}"
    );
    finals[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_records_in_the_log() {
    let w = World::start("progress").await;
    w.bucket("src").await;
    w.bucket("dst").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;
    let mut bytes = 0;
    for i in 0..5 {
        let body = random_bytes(1000 * (i + 1));
        bytes += body.len() as u64;
        w.put("src", &format!("k{i}"), &body).await;
    }
    let cfg = w.config("src", "dst", &q, "ledger", json!({}));

    // A dry run knows no total: counts, a listing rate, no ETA.
    let dry = w.run(
        "finder",
        &cfg,
        &[
            "--dry-run",
            "--log-format",
            "json",
            "--progress-interval",
            "1",
        ],
    );
    let log = stderr(&dry);
    assert!(dry.status.success(), "{log}");
    let end = last(&records(&log), &log);
    for (field, value) in [
        ("scanned", 5),
        ("pending", 5),
        ("pending_bytes", bytes),
        ("copied", 0),
        ("failed", 0),
    ] {
        assert_eq!(end[field].as_u64(), Some(value), "{field} in {end}");
    }
    for field in ["scanned_per_sec", "bytes_per_sec", "elapsed_secs"] {
        assert!(end[field].is_u64(), "{field} in {end}");
    }
    assert!(end.get("eta_secs").is_none(), "{end}");
    assert!(
        end["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("finder totals: listed 5 ")),
        "{end}"
    );

    // Text logs without a terminal get the records too; --quiet and an interval of 0 none, the report stays.
    let text = w.run("finder", &cfg, &["--dry-run"]);
    assert!(
        stderr(&text).contains("finder totals: listed 5 "),
        "{}",
        stderr(&text)
    );
    let quiet = w.run("finder", &cfg, &["--dry-run", "-q", "--log-format", "json"]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(records(&stderr(&quiet)).is_empty(), "{}", stderr(&quiet));
    assert!(
        stdout(&quiet).contains("would move 5 objects"),
        "{}",
        stdout(&quiet)
    );
    let off = w
        .cmd("finder", &cfg)
        .args(["--dry-run", "--log-format", "json"])
        .env("DTH_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    assert!(off.status.success(), "{}", stderr(&off));
    assert!(records(&stderr(&off)).is_empty(), "{}", stderr(&off));

    // A worker waiting 3 s on an empty queue: a record every second (DTH_PROGRESS_SECS), then the final one.
    let idle = w
        .cmd("worker", &cfg)
        .args(["--log-format", "json", "--exit-when-idle", "3"])
        .env("DTH_PROGRESS_SECS", "1")
        .output()
        .unwrap();
    let log = stderr(&idle);
    assert!(idle.status.success(), "{log}");
    let rs = records(&log);
    last(&rs, &log);
    let elapsed: Vec<u64> = rs
        .iter()
        .filter(|r| r["last"] == false)
        .filter_map(|r| r["elapsed_secs"].as_u64())
        .collect();
    assert!(elapsed.len() >= 2, "{log}");
    assert!(elapsed.windows(2).all(|p| p[0] < p[1]), "{log}");

    // The copy: the final record has what the worker copied.
    let found = w.run("finder", &cfg, &[]);
    assert!(found.status.success(), "{}", stderr(&found));
    let (mut worker, log) =
        w.spawn_worker(&cfg, &["--log-format", "json", "--exit-when-idle", "3"]);
    let status = wait(&mut worker, Duration::from_secs(120));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    let end = last(&records(&log), &log);
    for (field, value) in [
        ("copied", 5),
        ("copied_bytes", bytes),
        ("failed", 0),
        ("gone", 0),
        ("scanned", 0),
    ] {
        assert_eq!(end[field].as_u64(), Some(value), "{field} in {end}");
    }
    assert!(end["bytes_per_sec"].is_u64(), "{end}");
    assert_eq!(w.keys("dst").await.len(), 5);
}

/// Drop the ANSI escape sequences (CSI: ESC [ ... final byte) of `s`.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bar_on_a_terminal_with_log_lines_whole() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) to run the worker on a pseudo-terminal");
        return;
    }
    let w = World::start("progress-tty").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;
    let cfg = w.config("src", "dst", &q, "ledger", json!({}));
    // The worker on a pseudo-terminal (stdout and stderr both), idle for 2 s: the bar is drawn meanwhile, and
    // "queue drained" is logged while it is shown.
    let worker = w.cmd("worker", &cfg);
    let line = format!(
        "{} --config {} --exit-when-idle 2",
        bin("worker").display(),
        cfg.display()
    );
    let mut script = Command::new("script");
    script.args(["-qfec", &line, "/dev/null"]);
    for (k, v) in worker.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let mut child = Proc(
        script
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read as it comes: a full pipe would stop the worker.
    let mut pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut pipe, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = wait(&mut child, Duration::from_secs(60));
    let out = reader.join().unwrap();
    std::fs::write(w.dir.join("tty.log"), &out).unwrap();
    assert!(status.success(), "{out:?}");
    // What the terminal shows of each line: the text after its last carriage return (but the one the
    // pseudo-terminal puts before each line feed).
    let shown: Vec<String> = out
        .split('\n')
        .map(|l| {
            let l = l.trim_end_matches('\r');
            strip_ansi(l.rsplit('\r').next().unwrap_or_default())
        })
        .collect();
    assert!(
        out.contains("worker") && out.contains("copied 0 (0 B) | failed 0 | gone 0 | 0 B/s"),
        "no bar drawn: {out:?}"
    );
    for message in ["queue drained: exiting", "worker finished"] {
        assert!(
            shown
                .iter()
                .any(|l| l.starts_with(|c: char| c.is_ascii_digit())
                    && l.contains(" INFO ")
                    && l.contains(message)),
            "{message:?} not on a line of its own: {shown:#?}"
        );
    }
    // No log line carries a piece of the bar.
    assert!(
        !shown
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("failed 0 | gone")),
        "{shown:#?}"
    );
}
