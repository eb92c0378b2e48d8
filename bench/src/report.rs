//! The Markdown report of an `edge` run.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use crate::edge::{EdgeOptions, EdgeResults, Round, ServerRound};
use crate::load::LoadReport;
use crate::process::Memory;
use crate::reload::{MAX_CONSECUTIVE_MISSES, ReloadReport};
use crate::stats::Latencies;

/// goose-api should serve at least this share of the bare server's requests per second.
const TARGET_THROUGHPUT_RATIO: f64 = 0.9;
/// A config edit should apply, as seen by a client, within this time at the 99th percentile.
const TARGET_RELOAD_P99: Duration = Duration::from_millis(300);

/// Prints the parameters, the results table and notes on stdout.
#[allow(clippy::print_stdout, reason = "the report is the output of `edge`")]
pub fn print(options: &EdgeOptions, results: &EdgeResults) {
    println!("{}", render(options, results));
}

fn render(options: &EdgeOptions, results: &EdgeResults) -> String {
    let mut lines = vec![
        format!(
            "Parameters: {} keep-alive connections; {} s measured per server in {} rounds \
             that alternate the servers, after a {} s warm-up each; {} rename-saves per reload \
             phase, polled every {} ms, each given {} ms.",
            options.concurrency,
            options.duration.as_secs(),
            options.rounds,
            options.warmup.as_secs(),
            options.reloads,
            options.poll_interval.as_millis(),
            options.reload_timeout.as_millis(),
        ),
        match options.header_read_timeout {
            Some(0) => "goose-api header read timeout: off.".to_owned(),
            Some(seconds) => format!("goose-api header read timeout: {seconds} s."),
            None => "goose-api header read timeout: its default.".to_owned(),
        },
        String::new(),
        "| Measure | Result | Target | Met |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    lines.extend(rows(results).iter().map(Row::render));
    lines.push(String::new());
    lines.extend(notes(results));
    lines.join("\n")
}

struct Row {
    measure: String,
    result: String,
    target: &'static str,
    met: Option<bool>,
}

impl Row {
    fn info(measure: impl Into<String>, result: String) -> Self {
        Self {
            measure: measure.into(),
            result,
            target: "",
            met: None,
        }
    }

    fn checked(
        measure: impl Into<String>,
        result: String,
        target: &'static str,
        met: bool,
    ) -> Self {
        Self {
            measure: measure.into(),
            result,
            target,
            met: Some(met),
        }
    }

    fn render(&self) -> String {
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        format!(
            "| {} | {} | {} | {met} |",
            self.measure, self.result, self.target
        )
    }
}

fn rows(results: &EdgeResults) -> Vec<Row> {
    let bare = &results.bare;
    let daemon = &results.daemon;
    let ratio = daemon.load.requests_per_second() / bare.requests_per_second();
    let load_failed = bare.failed + daemon.load.failed;
    let load_requests = bare.requests() + daemon.load.requests();
    let during = &daemon.load_during_reloads;
    let polls = &daemon.reloads_under_load;
    let failed_during = during.failed + polls.failed_polls;
    vec![
        Row::info("Bare axum: requests/s", rate(bare)),
        Row::info("Bare axum: latency p50 / p99", p50_p99(&bare.latencies, 2)),
        Row::info("goose-api: requests/s", rate(&daemon.load)),
        Row::info(
            "goose-api: latency p50 / p99",
            p50_p99(&daemon.load.latencies, 2),
        ),
        Row::checked(
            "Requests/s ratio goose-api / bare axum",
            if ratio.is_finite() {
                format!("{ratio:.2}")
            } else {
                "n/a".to_owned()
            },
            "≥ 0.90",
            ratio >= TARGET_THROUGHPUT_RATIO,
        ),
        Row::info(
            "Ratio per round: median (lowest to highest)",
            round_ratios(&results.rounds),
        ),
        Row::info(
            "Server CPU time per request: bare axum / goose-api",
            cpu_per_request(&results.rounds),
        ),
        Row::info(
            "Requests not 200 in the two runs above",
            format!("{} of {}", thousands(load_failed), thousands(load_requests)),
        ),
        reload_row("Reload latency p50 / p99, idle", &daemon.reloads_idle),
        reload_row("Reload latency p50 / p99, under load", polls),
        Row::checked(
            format!("Requests not 200 during {} reloads under load", polls.saves),
            format!(
                "{} of {} load requests, {} of {} polls",
                thousands(during.failed),
                thousands(during.requests()),
                thousands(polls.failed_polls),
                thousands(polls.polls)
            ),
            "0",
            failed_during == 0,
        ),
        Row::info("goose-api: requests/s during those reloads", rate(during)),
        Row::info(
            "goose-api VmRSS after start-up, before load",
            mebibytes(daemon.memory_at_start.rss_kib),
        ),
        Row::info(
            "goose-api VmRSS after load, idle",
            mebibytes(daemon.memory_after_load.rss_kib),
        ),
        memory_at_end_row(&daemon.memory_at_end),
    ]
}

fn round_ratios(rounds: &[Round]) -> String {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(Round::ratio)
        .filter(|ratio| ratio.is_finite())
        .collect();
    if ratios.is_empty() {
        return "n/a".to_owned();
    }
    ratios.sort_by(f64::total_cmp);
    let middle = ratios.len() / 2;
    let median = if ratios.len().is_multiple_of(2) {
        f64::midpoint(ratios[middle - 1], ratios[middle])
    } else {
        ratios[middle]
    };
    format!(
        "{median:.2} ({:.2} to {:.2}, {} rounds)",
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len()
    )
}

/// CPU time of each server process over all rounds, per request that returned 200.
fn cpu_per_request(rounds: &[Round]) -> String {
    let per_request = |pick: fn(&Round) -> ServerRound| {
        let (cpu, requests) = rounds
            .iter()
            .map(pick)
            .fold((Duration::ZERO, 0_u64), |(cpu, requests), round| {
                (cpu + round.cpu, requests + round.requests)
            });
        if requests == 0 {
            return "n/a".to_owned();
        }
        format!("{:.1} µs", cpu.as_secs_f64() * 1e6 / requests as f64)
    };
    format!(
        "{} / {}",
        per_request(|round| round.bare),
        per_request(|round| round.daemon)
    )
}

fn reload_row(measure: &str, report: &ReloadReport) -> Row {
    let p99 = report.latencies.percentile(99.0);
    let mut result = format!(
        "{} ({} of {} seen",
        p50_p99(&report.latencies, 1),
        report.latencies.len(),
        report.saves
    );
    if report.stopped_early {
        result.push_str(&format!(
            ", stopped after {MAX_CONSECUTIVE_MISSES} misses in a row"
        ));
    }
    result.push(')');
    let met = report.missed == 0 && p99.is_some_and(|p99| p99 < TARGET_RELOAD_P99);
    Row::checked(measure, result, "p99 < 300 ms", met)
}

fn memory_at_end_row(memory: &Memory) -> Row {
    Row::info(
        "goose-api VmRSS / VmHWM (peak) after the reload phases",
        format!(
            "{} / {}",
            mebibytes(memory.rss_kib),
            mebibytes(memory.peak_kib)
        ),
    )
}

/// Lines under the table: how the daemon stopped, what it logged, and sampled failures.
fn notes(results: &EdgeResults) -> Vec<String> {
    let stop = &results.daemon.stop;
    let stopped = if stop.killed {
        format!(
            "goose-api ignored SIGTERM for {} ms and was killed with SIGKILL",
            stop.waited.as_millis()
        )
    } else {
        format!(
            "goose-api stopped {} ms after SIGTERM with {}",
            stop.waited.as_millis(),
            describe_exit(stop.status)
        )
    };
    let mut lines = vec![format!(
        "{stopped}. It logged {} lines at WARN or ERROR level or outside JSON.",
        stop.log.warnings
    )];
    let daemon = &results.daemon;
    let samples = [
        ("goose-api log", &stop.log.samples),
        ("Bare axum failures", &results.bare.failure_samples),
        ("goose-api load failures", &daemon.load.failure_samples),
        (
            "Failures during reloads, load",
            &daemon.load_during_reloads.failure_samples,
        ),
        (
            "Failures during reloads, polls",
            &daemon.reloads_under_load.failure_samples,
        ),
        (
            "Failures during idle reloads, polls",
            &daemon.reloads_idle.failure_samples,
        ),
    ];
    for (title, sample) in samples {
        if sample.is_empty() {
            continue;
        }
        lines.push(String::new());
        lines.push(format!("{title}, first {}:", sample.len()));
        lines.extend(sample.iter().map(|line| format!("    {line}")));
    }
    lines
}

pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn rate(report: &LoadReport) -> String {
    thousands(report.requests_per_second().round() as u64)
}

pub(crate) fn p50_p99(latencies: &Latencies, decimals: usize) -> String {
    let format = |p| match latencies.percentile(p) {
        Some(latency) => format!("{:.decimals$} ms", milliseconds(latency)),
        None => "n/a".to_owned(),
    };
    format!("{} / {}", format(50.0), format(99.0))
}

pub(crate) fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub(crate) fn mebibytes(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Formats `value` with commas between groups of three digits.
pub(crate) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn row_marks_missed_target() {
        let row = Row::checked("ratio", "0.50".to_owned(), "≥ 0.90", false);
        assert_eq!(row.render(), "| ratio | 0.50 | ≥ 0.90 | **no** |");
    }
}
