//! The dashboard in a real browser (issue: see the run): Debian's `chromium`, headless, loads
//! the dashboard of a live run until the peers table lists every trainer and the loss chart
//! has points, with no error in its console, and saves a screenshot.
//!
//! Slow and needs `chromium` on the PATH, so it is ignored by default; `.ci/run` installs
//! chromium and runs it: `cargo test --release -p tessera-cli --test browser -- --ignored`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

/// `chromium --headless` with a virtual time budget (the page's timers run, its fetches are
/// waited for), printing the page's console to stderr. Returns (DOM or "", stderr).
fn chromium(args: &[&str], url: &str) -> (String, String) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--enable-logging=stderr",
            "--log-level=0",
            "--virtual-time-budget=6000",
            "--window-size=1400,1150",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (install Debian's `chromium`)");
    (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// The page's console lines that chromium logged (`CONSOLE(…)`, uncaught errors included).
fn console_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .filter(|l| l.contains("ERROR") || l.contains("Uncaught") || l.to_lowercase().contains("error"))
        .map(str::to_string)
        .collect()
}

fn rows_of(dom: &str, table: &str) -> usize {
    let Some(start) = dom.find(&format!("<table id=\"{table}\"")) else { return 0 };
    let end = dom[start..].find("</table>").map_or(dom.len(), |e| start + e);
    dom[start..end].matches("<tr>").count().saturating_sub(1) // the header row
}

fn points_of(dom: &str, canvas: &str) -> usize {
    let Some(at) = dom.find(&format!("<canvas id=\"{canvas}\"")) else { return 0 };
    let tag = &dom[at..at + dom[at..].find('>').unwrap_or(0)];
    tag.split("data-points=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "slow, and needs chromium: run by .ci/run"]
fn the_dashboard_of_a_live_run_lists_every_trainer_and_draws_the_loss_without_console_errors() {
    let trainers = 3u8;
    let cfg = config(trainers as usize, 40).with(|c| c.min_round_ms = 500);
    let run = Run::new("browser", cfg);
    let (mut coord, ticket) = run.coordinator_with("coord", &["--http", "127.0.0.1:0"]);
    let url = dashboard(&run);
    let _nodes: Vec<Proc> =
        (1..=trainers).map(|i| run.node(&ticket, i, &["--slow-step-ms", "150"])).collect();
    let t0 = Instant::now();
    let (dom, stderr) = loop {
        assert!(
            coord.child.try_wait().unwrap().is_none(),
            "the run ended before the page showed it:\n{}",
            coord.log()
        );
        assert!(t0.elapsed() < WAIT, "the page never listed every trainer with loss points");
        let (dom, stderr) = chromium(&["--dump-dom"], &url);
        // The loss chart can have its round-0 validation point before any round closed, so
        // wait for a closed round too (the bytes and timeline charts' points).
        let charts = ["loss", "bytes", "timeline"].iter().all(|c| points_of(&dom, c) > 0);
        if rows_of(&dom, "peers") >= trainers as usize && charts {
            break (dom, stderr);
        }
    };
    let errors = console_errors(&stderr);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));
    for i in 1..=trainers {
        assert!(dom.contains(&short_hex(&peer_id(i))), "trainer {i} is in the peers table");
    }
    assert!(points_of(&dom, "bytes") > 0 && points_of(&dom, "timeline") > 0, "every chart has points");
    let shot = run.dir.join("dashboard.png");
    let (_, stderr) = chromium(&[&format!("--screenshot={}", shot.display())], &url);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "a screenshot of the live page ({size} bytes):\n{stderr}");
    if let Ok(to) = std::env::var("TESSERA_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&to)).expect("copying the screenshot");
    }
    coord.kill9();
}
