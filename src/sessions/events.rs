//! The buffered event log of one turn, which streaming clients follow and resume.

use std::sync::{Arc, Mutex};

use futures::Stream;
use serde::Serialize;
use tokio::sync::watch;

/// One event of a turn, as sent over server-sent events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamEvent {
    /// Sequence number within the turn, from 1; sent as the SSE `id:`.
    pub id: u64,
    /// Event name: `text`, `tool_call`, `tool_result`, `retry`, `warning`, `finish` or
    /// `error`.
    pub kind: &'static str,
    /// Event payload.
    pub data: serde_json::Value,
}

/// Events of one turn, kept until the turn's session is released, so a client that
/// reconnects with `Last-Event-ID` gets what it missed.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<Vec<StreamEvent>>,
    /// Number of events and whether the log is finished.
    progress: watch::Sender<(usize, bool)>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            progress: watch::channel((0, false)).0,
        }
    }
}

impl EventLog {
    /// Appends an event and wakes followers.
    pub fn push(&self, kind: &'static str, data: serde_json::Value) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let id = events.len() as u64 + 1;
        events.push(StreamEvent { id, kind, data });
        let count = events.len();
        drop(events);
        self.progress.send_modify(|progress| progress.0 = count);
    }

    /// Marks the log complete; followers end after the last event.
    pub fn finish(&self) {
        self.progress.send_modify(|progress| progress.1 = true);
    }

    /// Returns whether the turn has ended.
    pub fn is_finished(&self) -> bool {
        self.progress.borrow().1
    }

    /// Returns the id of the last event so far, 0 before the first, and whether the turn
    /// has ended.
    pub fn progress(&self) -> (u64, bool) {
        let (count, finished) = *self.progress.borrow();
        (count as u64, finished)
    }

    /// Returns the events so far.
    pub fn snapshot(&self) -> Vec<StreamEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Streams the events with an id above `after`, then new ones as they arrive, until the
    /// log is finished.
    pub fn follow(self: Arc<Self>, after: u64) -> impl Stream<Item = StreamEvent> + Send {
        let progress = self.progress.subscribe();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        futures::stream::unfold(
            (self, progress, start),
            |(log, mut progress, next)| async move {
                loop {
                    let (count, finished) = *progress.borrow_and_update();
                    if next < count {
                        let event = log
                            .events
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(next)
                            .cloned()?;
                        return Some((event, (log, progress, next + 1)));
                    }
                    if finished || progress.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn follower_sees_past_and_future_events() {
        let log = Arc::new(EventLog::default());
        log.push("text", serde_json::json!("a"));
        log.push("text", serde_json::json!("b"));
        let follower = tokio::spawn(log.clone().follow(1).collect::<Vec<_>>());
        tokio::task::yield_now().await;
        log.push("finish", serde_json::json!({}));
        log.finish();
        let seen = follower.await.unwrap();
        let ids: Vec<u64> = seen.iter().map(|event| event.id).collect();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(seen[1].kind, "finish");
    }
}
