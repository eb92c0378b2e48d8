//! Draining a stdio server's stderr: each line is capped, logged with the extension name,
//! and the last lines are kept for the status route.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest stderr line kept or logged, in bytes; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 2048;
/// Lines kept for the status route, enough to show a stack trace's head.
pub const TAIL_LINES: usize = 40;
/// Maximum stderr lines logged per extension server and second. The rest are counted, and
/// the count is logged when the next second starts, so a flood cannot fill the log.
const MAX_LOGGED_LINES_PER_SECOND: u32 = 100;

/// How many lines of the current second were logged and how many were not.
struct LogBudget {
    second_started: Instant,
    logged: u32,
    skipped: u64,
}

impl LogBudget {
    fn new() -> Self {
        Self {
            second_started: Instant::now(),
            logged: 0,
            skipped: 0,
        }
    }

    /// Returns whether the next line may be logged, and logs the count of lines that were
    /// not when a new second starts.
    fn allow(&mut self, extension: &str) -> bool {
        if self.second_started.elapsed() >= Duration::from_secs(1) {
            self.report(extension);
            self.second_started = Instant::now();
            self.logged = 0;
        }
        if self.logged < MAX_LOGGED_LINES_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.skipped += 1;
            false
        }
    }

    fn report(&mut self, extension: &str) {
        if self.skipped > 0 {
            tracing::debug!(
                extension,
                skipped = self.skipped,
                "MCP server stderr lines not logged, over {MAX_LOGGED_LINES_PER_SECOND} per second"
            );
            self.skipped = 0;
        }
    }
}

/// The last lines a server wrote to stderr, shared between its drain task and the status.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    /// Returns the kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// Returns the kept lines joined by newlines, for error messages.
    pub fn joined(&self) -> String {
        self.lines().join("\n")
    }

    /// Forgets the kept lines, when a new server process starts.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn push(&self, line: String) {
        let mut lines = self.lock();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        // The deque stays consistent even if a holder panicked.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads `stream` to its end, splitting it into lines capped at [`MAX_LINE_BYTES`].
pub async fn drain(extension: String, mut stream: impl AsyncRead + Unpin, tail: StderrTail) {
    let mut chunk = vec![0_u8; 8192];
    let mut line = Vec::with_capacity(256);
    let mut truncated = false;
    let mut budget = LogBudget::new();
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for &byte in &chunk[..read] {
            if byte == b'\n' {
                emit(&extension, &tail, &line, truncated, &mut budget);
                line.clear();
                truncated = false;
            } else if line.len() < MAX_LINE_BYTES {
                line.push(byte);
            } else {
                truncated = true;
            }
        }
    }
    if !line.is_empty() {
        emit(&extension, &tail, &line, truncated, &mut budget);
    }
    budget.report(&extension);
}

fn emit(extension: &str, tail: &StderrTail, line: &[u8], truncated: bool, budget: &mut LogBudget) {
    let mut text = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned();
    if truncated {
        text.push_str(" [line truncated]");
    }
    if budget.allow(extension) {
        tracing::debug!(extension, line = %text, "MCP server stderr");
    }
    tail.push(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_counts_lines_past_the_limit() {
        let mut budget = LogBudget::new();
        let allowed = (0..MAX_LOGGED_LINES_PER_SECOND + 50)
            .filter(|_| budget.allow("test"))
            .count();
        assert_eq!(allowed, MAX_LOGGED_LINES_PER_SECOND as usize);
        assert_eq!(budget.skipped, 50);
        budget.second_started -= Duration::from_secs(1);
        assert!(budget.allow("test"), "a new second starts a new budget");
        assert_eq!(budget.skipped, 0);
    }

    #[tokio::test]
    async fn long_lines_are_capped_and_tail_is_bounded() {
        let mut input = Vec::new();
        input.extend(vec![b'x'; MAX_LINE_BYTES * 3]);
        input.push(b'\n');
        for index in 0..TAIL_LINES {
            input.extend(format!("line {index}\n").bytes());
        }
        input.extend(b"last without newline");
        let tail = StderrTail::default();
        drain("test".to_owned(), input.as_slice(), tail.clone()).await;
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 1");
        assert_eq!(lines[TAIL_LINES - 1], "last without newline");

        let tail = StderrTail::default();
        let long = vec![b'y'; MAX_LINE_BYTES + 10];
        drain("test".to_owned(), long.as_slice(), tail.clone()).await;
        let kept = tail.lines();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].ends_with("[line truncated]"));
        assert!(kept[0].len() < MAX_LINE_BYTES + 20);
    }
}
