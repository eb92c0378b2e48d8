//! The Markdown report of a `sessions` run: one column per store backend.

use crate::report::{describe_exit, mebibytes, p50_p99, thousands};
use crate::sessions::{BackendResults, PAGE_SIZE, Phase, SessionsOptions};

/// Prints the parameters, the results table and notes on stdout.
#[allow(
    clippy::print_stdout,
    reason = "the report is the output of `sessions`"
)]
pub fn print(options: &SessionsOptions, results: &[BackendResults]) {
    println!("{}", render(options, results));
}

fn render(options: &SessionsOptions, results: &[BackendResults]) -> String {
    let header: Vec<&str> = results
        .iter()
        .map(|result| result.backend.label())
        .collect();
    let mut lines = vec![
        format!(
            "Parameters: {} rounds of {} concurrent sessions with one turn each; {} stored \
             sessions inserted before start; {} sessions started one after another for \
             memory; {} timed requests per listing, the deep page after {} stored sessions.",
            options.rounds,
            options.concurrency,
            thousands(options.stored),
            options.memory_sessions,
            options.list_requests,
            thousands(options.deep_offset),
        ),
        String::new(),
        format!("| Measure | {} | Target |", header.join(" | ")),
        format!("|---|{}---|", "---|".repeat(results.len())),
    ];
    let row = |measure: &str, target: &str, cell: &dyn Fn(&BackendResults) -> String| {
        let cells: Vec<String> = results.iter().map(cell).collect();
        format!("| {measure} | {} | {target} |", cells.join(" | "))
    };
    lines.push(row(
        "Stored sessions inserted with SQL before start",
        "",
        &|r| {
            format!(
                "{} in {:.1} s",
                thousands(r.seeded.count),
                r.seeded.elapsed.as_secs_f64()
            )
        },
    ));
    lines.push(row("Concurrent sessions: turns per second", "", &|r| {
        turns_per_second(&r.concurrent)
    }));
    lines.push(row("Concurrent sessions: latency p50 / p99", "", &|r| {
        p50_p99(&r.concurrent.latencies, 1)
    }));
    lines.push(row("Concurrent sessions: failed turns", "0", &|r| {
        failed_of(&r.concurrent)
    }));
    lines.push(row(
        "Live sessions before / after the memory phase",
        "",
        &|r| {
            format!(
                "{} / {}",
                thousands(r.memory_before.0),
                thousands(r.memory_after.0)
            )
        },
    ));
    lines.push(row(
        "goose-api VmRSS before / after the memory phase",
        "",
        &|r| {
            format!(
                "{} / {}",
                mebibytes(r.memory_before.1.rss_kib),
                mebibytes(r.memory_after.1.rss_kib)
            )
        },
    ));
    lines.push(row("VmRSS growth per live session", "", &|r| {
        per_session(r)
    }));
    lines.push(row(
        "goose-api VmHWM (peak) after the memory phase",
        "",
        &|r| mebibytes(r.memory_after.1.peak_kib),
    ));
    lines.push(row("Sessions in the store during the listings", "", &|r| {
        thousands(r.stored_at_listing)
    }));
    let first = format!("`GET /sessions?limit={PAGE_SIZE}`, first page: p50 / p99");
    lines.push(row(&first, "", &|r| p50_p99(&r.first_page.latencies, 2)));
    let deep = format!(
        "Same, page after {} stored sessions: p50 / p99",
        thousands(options.deep_offset)
    );
    lines.push(row(&deep, "", &|r| p50_p99(&r.deep_page.latencies, 2)));
    lines.push(row("Listing requests failed", "0", &|r| {
        format!(
            "{} of {}",
            r.first_page.failed + r.deep_page.failed,
            r.first_page.latencies.len()
                + r.deep_page.latencies.len()
                + r.first_page.failed
                + r.deep_page.failed
        )
    }));
    lines.push(String::new());
    lines.extend(results.iter().map(notes));
    lines.join("\n")
}

fn turns_per_second(phase: &Phase) -> String {
    let seconds = phase.elapsed.as_secs_f64();
    if seconds == 0.0 {
        return "n/a".to_owned();
    }
    format!("{:.0}", phase.latencies.len() as f64 / seconds)
}

fn failed_of(phase: &Phase) -> String {
    let total = phase.latencies.len() + phase.failed;
    if phase.failed == 0 {
        format!("0 of {}", thousands(total as u64))
    } else {
        format!("**{} of {}**", phase.failed, thousands(total as u64))
    }
}

fn per_session(result: &BackendResults) -> String {
    let (live_before, before) = result.memory_before;
    let (live_after, after) = result.memory_after;
    let sessions = live_after.saturating_sub(live_before);
    if sessions == 0 {
        return "n/a: no new live sessions".to_owned();
    }
    let growth = after.rss_kib as f64 - before.rss_kib as f64;
    format!("{:.1} KiB", growth / sessions as f64)
}

fn notes(result: &BackendResults) -> String {
    let stop = &result.stop;
    let mut note = format!(
        "{}: goose-api stopped {} ms after SIGTERM with {}{}, and logged {} lines at WARN or \
         ERROR level or outside JSON",
        result.backend.label(),
        stop.waited.as_millis(),
        describe_exit(stop.status),
        if stop.killed { " after SIGKILL" } else { "" },
        stop.log.warnings,
    );
    if !stop.log.samples.is_empty() {
        note.push_str(&format!(", the first: {:?}", stop.log.samples));
    }
    note.push('.');
    for (phase, name) in [
        (&result.concurrent, "concurrent sessions"),
        (&result.first_page, "first page"),
        (&result.deep_page, "deep page"),
    ] {
        if !phase.failure_samples.is_empty() {
            note.push_str(&format!(
                " Failures of the {name}: {:?}.",
                phase.failure_samples
            ));
        }
    }
    if result.provider_unexpected > 0 {
        note.push_str(&format!(
            " The instant provider rejected {} requests.",
            result.provider_unexpected
        ));
    }
    note
}
