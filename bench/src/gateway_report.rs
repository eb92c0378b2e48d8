//! The Markdown report of a `gateway` run.

use crate::gateway::{GatewayOptions, GatewayResults};
use crate::gateway_load::CallReport;
use crate::process::StopOutcome;
use crate::report::{describe_exit, milliseconds, p50_p99, thousands};
use crate::stats::Latencies;

/// goose-api should serve at least this many times mcpo's calls per second.
const TARGET_RATIO: f64 = 5.0;

/// Prints the parameters, the result tables and notes on stdout.
#[allow(clippy::print_stdout, reason = "the report is the output of `gateway`")]
pub fn print(options: &GatewayOptions, results: &GatewayResults) {
    println!("{}", render(options, results));
}

fn render(options: &GatewayOptions, results: &GatewayResults) -> String {
    let mut lines = vec![
        format!(
            "Parameters: {} keep-alive connections; {} s measured after a {} s warm-up per \
             gateway; {} sequential calls per path after {} unmeasured; {} manifest drops.",
            options.concurrency,
            options.duration.as_secs(),
            options.warmup.as_secs(),
            thousands(options.sequential_calls as u64),
            thousands((options.sequential_calls / 10) as u64),
            options.drops,
        ),
        format!(
            "Load average (1, 5, 15 min) before: {}; after: {}.",
            results.load_average.0, results.load_average.1
        ),
        String::new(),
    ];
    lines.extend(load_lines(results));
    lines.push(String::new());
    lines.extend(sequential_lines(results));
    lines.push(String::new());
    lines.push(format!(
        "Manifest drop to tools listed, p50 / p99: {} ({} of {} seen).",
        p50_p99(&results.drops, 1),
        results.drops.len(),
        results.drops.len() + results.missed_drops
    ));
    lines.push(String::new());
    lines.push(format!(
        "{}; it logged {} lines at WARN or ERROR level or outside JSON. {}.",
        stopped("goose-api", &results.daemon_stop),
        results.daemon_stop.log.warnings,
        stopped("mcpo", &results.mcpo_stop),
    ));
    lines.extend(samples(results));
    lines.join("\n")
}

fn load_lines(results: &GatewayResults) -> Vec<String> {
    let daemon = &results.daemon_load;
    let mcpo = &results.mcpo_load;
    let direct = &results.direct_load;
    let ratio = daemon.calls_per_second() / mcpo.calls_per_second();
    let met = if ratio >= TARGET_RATIO {
        "yes"
    } else {
        "**no**"
    };
    vec![
        "| Concurrent tool calls | goose-api | mcpo | direct rmcp client |".to_owned(),
        "|---|---|---|---|".to_owned(),
        format!(
            "| Calls/s | {} | {} | {} |",
            rate(daemon),
            rate(mcpo),
            rate(direct)
        ),
        format!(
            "| Latency p50 / p99 | {} | {} | {} |",
            p50_p99(&daemon.latencies, 2),
            p50_p99(&mcpo.latencies, 2),
            p50_p99(&direct.latencies, 2)
        ),
        format!(
            "| Failed calls | {} | {} | {} |",
            failed(daemon),
            failed(mcpo),
            failed(direct)
        ),
        String::new(),
        format!(
            "Calls/s ratio goose-api / mcpo: {ratio:.2} (target ≥ {TARGET_RATIO:.0}, met: {met})."
        ),
    ]
}

fn sequential_lines(results: &GatewayResults) -> Vec<String> {
    let direct = &results.direct_sequential;
    let through = &results.daemon_sequential.latencies;
    vec![
        "| Sequential calls of `echo` | p50 | p99 |".to_owned(),
        "|---|---|---|".to_owned(),
        sequential_row("Direct rmcp client, stdio", direct),
        sequential_row("Through goose-api, HTTP", through),
        format!(
            "| Difference (goose-api minus direct) | {} | {} |",
            difference(through, direct, 50.0),
            difference(through, direct, 99.0)
        ),
    ]
}

fn rate(report: &CallReport) -> String {
    thousands(report.calls_per_second().round() as u64)
}

fn failed(report: &CallReport) -> String {
    let calls = report.latencies.len() as u64 + report.failed;
    format!("{} of {}", thousands(report.failed), thousands(calls))
}

fn sequential_row(path: &str, latencies: &Latencies) -> String {
    let format = |p| match latencies.percentile(p) {
        Some(latency) => format!("{:.3} ms", milliseconds(latency)),
        None => "n/a".to_owned(),
    };
    format!("| {path} | {} | {} |", format(50.0), format(99.0))
}

/// Returns the difference of the `p`th percentiles, which is not the percentile of the
/// per-call differences, because the two paths made different calls.
fn difference(through: &Latencies, direct: &Latencies, p: f64) -> String {
    match (through.percentile(p), direct.percentile(p)) {
        (Some(through), Some(direct)) => {
            let signed = milliseconds(through) - milliseconds(direct);
            format!("{signed:+.3} ms")
        }
        _ => "n/a".to_owned(),
    }
}

fn stopped(name: &str, stop: &StopOutcome) -> String {
    if stop.killed {
        format!(
            "{name} ignored SIGTERM for {} ms and was killed with SIGKILL",
            stop.waited.as_millis()
        )
    } else {
        format!(
            "{name} stopped {} ms after SIGTERM with {}",
            stop.waited.as_millis(),
            describe_exit(stop.status)
        )
    }
}

fn samples(results: &GatewayResults) -> Vec<String> {
    let mut lines = Vec::new();
    let groups = [
        ("goose-api log", &results.daemon_stop.log.samples),
        (
            "direct client load failures",
            &results.direct_load.failure_samples,
        ),
        (
            "goose-api load failures",
            &results.daemon_load.failure_samples,
        ),
        (
            "goose-api sequential failures",
            &results.daemon_sequential.failure_samples,
        ),
        ("mcpo load failures", &results.mcpo_load.failure_samples),
    ];
    for (title, sample) in groups {
        if sample.is_empty() {
            continue;
        }
        lines.push(String::new());
        lines.push(format!("{title}, first {}:", sample.len()));
        lines.extend(sample.iter().map(|line| format!("    {line}")));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn difference_of_percentiles_is_signed() {
        let slow = Latencies::from_unsorted(vec![Duration::from_micros(300)]);
        let fast = Latencies::from_unsorted(vec![Duration::from_micros(100)]);
        assert_eq!(difference(&slow, &fast, 50.0), "+0.200 ms");
        assert_eq!(difference(&fast, &slow, 50.0), "-0.200 ms");
        assert_eq!(difference(&Latencies::default(), &fast, 50.0), "n/a");
    }
}
