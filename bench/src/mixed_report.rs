//! The Markdown report of a `mixed` run: one row per route, then the daemon's resources.

use crate::mixed::{MixedOptions, MixedResults};
use crate::report::{describe_exit, mebibytes, p50_p99, thousands};
use crate::stats::Latencies;

/// Prints the parameters, the tables and the error samples on stdout.
#[allow(clippy::print_stdout, reason = "the report is the output of `mixed`")]
pub fn print(options: &MixedOptions, results: &MixedResults) {
    println!("{}", render(options, results));
}

fn render(options: &MixedOptions, results: &MixedResults) -> String {
    let seconds = results.elapsed.as_secs_f64();
    let mut lines = vec![
        format!(
            "Parameters: {} clients, each on its own keep-alive connection with one request \
             in flight, for {} s; requests end {:.1} s after the start.",
            thousands(options.clients as u64),
            options.duration.as_secs(),
            seconds
        ),
        String::new(),
        "| Route | Requests | Requests/s | p50 / p99 | Errors |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    for route in &results.routes {
        lines.push(route_row(
            route.route.label(),
            &route.latencies,
            route.errors,
            seconds,
        ));
    }
    let all = Latencies::from_unsorted(
        results
            .routes
            .iter()
            .flat_map(|route| route.latencies.samples().iter().copied())
            .collect(),
    );
    let errors = results.routes.iter().map(|route| route.errors).sum();
    lines.push(route_row("**all routes**", &all, errors, seconds));
    lines.push(String::new());
    lines.extend(resource_rows(results));
    if !results.error_samples.is_empty() {
        lines.push(String::new());
        lines.push("First errors:".to_owned());
        lines.extend(
            results
                .error_samples
                .iter()
                .map(|sample| format!("- {sample}")),
        );
    }
    if !results.stop.log.samples.is_empty() {
        lines.push(String::new());
        lines.push("First WARN or ERROR lines of the daemon:".to_owned());
        lines.extend(
            results
                .stop
                .log
                .samples
                .iter()
                .map(|line| format!("- `{line}`")),
        );
    }
    lines.join("\n")
}

fn route_row(label: &str, latencies: &Latencies, errors: u64, seconds: f64) -> String {
    let requests = latencies.len() as u64 + errors;
    format!(
        "| {label} | {} | {:.0} | {} | {} |",
        thousands(requests),
        requests as f64 / seconds,
        p50_p99(latencies, 1),
        thousands(errors)
    )
}

fn resource_rows(results: &MixedResults) -> Vec<String> {
    let (before, after) = &results.load_average;
    let stop = &results.stop;
    vec![
        "| Measure | Result |".to_owned(),
        "|---|---|".to_owned(),
        format!(
            "| Errors: requests, failed connects, unexpected provider requests | {} |",
            thousands(results.total_errors())
        ),
        format!(
            "| Failed connects | {} |",
            thousands(results.connect_errors)
        ),
        format!(
            "| Provider requests served / unexpected | {} / {} |",
            thousands(results.provider_requests),
            thousands(results.provider_unexpected)
        ),
        format!(
            "| goose-api VmHWM (peak RSS) / VmRSS at the end | {} / {} |",
            mebibytes(results.memory.peak_kib),
            mebibytes(results.memory.rss_kib)
        ),
        format!(
            "| goose-api open file descriptors, max of {} samples | {} |",
            results.peaks.samples,
            thousands(results.peaks.open_fds as u64)
        ),
        format!("| goose-api threads, max | {} |", results.peaks.threads),
        format!("| Load average before / after (1, 5, 15 min) | {before} / {after} |"),
        format!(
            "| goose-api stop | {} after {} ms{}; {} WARN or ERROR lines |",
            describe_exit(stop.status),
            stop.waited.as_millis(),
            if stop.killed { ", killed" } else { "" },
            stop.log.warnings
        ),
    ]
}
