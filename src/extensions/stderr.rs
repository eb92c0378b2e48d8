//! Draining a stdio server's stderr: each line is capped, logged with the extension name,
//! and the last lines are kept for the status route.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest stderr line kept or logged, in bytes; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 2048;
/// Lines kept for the status route, enough to show a stack trace's head.
pub const TAIL_LINES: usize = 40;

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
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for &byte in &chunk[..read] {
            if byte == b'\n' {
                emit(&extension, &tail, &line, truncated);
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
        emit(&extension, &tail, &line, truncated);
    }
}

fn emit(extension: &str, tail: &StderrTail, line: &[u8], truncated: bool) {
    let mut text = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned();
    if truncated {
        text.push_str(" [line truncated]");
    }
    tracing::debug!(extension, line = %text, "MCP server stderr");
    tail.push(text);
}

#[cfg(test)]
mod tests {
    use super::*;

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
