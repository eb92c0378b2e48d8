//! Keeping a conversation acceptable to providers: repairing unanswered tool requests,
//! estimating its size and choosing what a summary replaces.

use std::collections::HashSet;

use super::message::{ContentPart, Message, Role};

/// Text of the result given to a tool request that never got one.
pub const CANCELLED_RESULT: &str =
    "cancelled: the call did not finish because the turn was cancelled or the daemon stopped";

/// Adds a "cancelled" error result for every tool request without a result, and removes
/// results that answer no request. Returns how many parts were added or removed.
///
/// A cancel or a crash can leave such gaps, and providers reject a conversation with them.
pub fn repair(history: &mut Vec<Message>) -> usize {
    let mut changes = 0;
    let mut index = 0;
    while index < history.len() {
        match history[index].role {
            Role::Assistant => {
                changes += answer_open_requests(history, index);
                // Skip the tool message that answers this one, if any.
                index += 1;
                if history.get(index).is_some_and(|m| m.role == Role::Tool) {
                    index += 1;
                }
            }
            Role::Tool => {
                // A tool message not right after an assistant message answers nothing.
                changes += history[index].content.len();
                history.remove(index);
            }
            Role::User => index += 1,
        }
    }
    changes
}

/// Makes the message after the assistant message at `index` answer each of its requests.
fn answer_open_requests(history: &mut Vec<Message>, index: usize) -> usize {
    let requested: Vec<String> = history[index]
        .tool_requests()
        .iter()
        .map(|(id, _, _)| (*id).to_owned())
        .collect();
    let has_tool_message = history.get(index + 1).is_some_and(|m| m.role == Role::Tool);
    if requested.is_empty() && !has_tool_message {
        return 0;
    }
    if !has_tool_message {
        history.insert(
            index + 1,
            Message {
                role: Role::Tool,
                content: Vec::new(),
            },
        );
    }
    let results = &mut history[index + 1].content;
    let wanted: HashSet<&str> = requested.iter().map(String::as_str).collect();
    let before = results.len();
    results.retain(|part| match part {
        ContentPart::ToolResult { id, .. } => wanted.contains(id.as_str()),
        _ => false,
    });
    let mut changes = before - results.len();
    let answered: HashSet<String> = results
        .iter()
        .filter_map(|part| match part {
            ContentPart::ToolResult { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    for id in &requested {
        if !answered.contains(id) {
            results.push(ContentPart::tool_error(id.clone(), CANCELLED_RESULT));
            changes += 1;
        }
    }
    if history[index + 1].content.is_empty() {
        history.remove(index + 1);
    }
    changes
}

/// Estimates the tokens of `text`: about four characters per token for English text and
/// JSON with the tokenizers of current models. An estimate, not a count.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Estimates the tokens of a whole conversation.
pub fn estimate_history_tokens(history: &[Message]) -> u64 {
    history
        .iter()
        .map(|message| {
            let json = serde_json::to_string(&message.content).unwrap_or_default();
            estimate_tokens(&json)
        })
        .sum()
}

/// Returns the index where the recent tail to keep starts: the latest user message that
/// leaves at most `keep_tokens` after it, but never index 0. `None` when no user message
/// after the first can start a tail, so nothing can be summarized.
pub fn summary_split(history: &[Message], keep_tokens: u64) -> Option<usize> {
    let starts: Vec<usize> = history
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, message)| message.role == Role::User)
        .map(|(index, _)| index)
        .collect();
    let fits = |start: &&usize| estimate_history_tokens(&history[**start..]) <= keep_tokens;
    starts.iter().find(fits).or_else(|| starts.last()).copied()
}

/// Returns the user message that replaces summarized messages.
pub fn summary_message(summary: &str) -> Message {
    Message::user(format!("Summary of the earlier conversation:\n{summary}"))
}

/// Replaces `history[..split]` with one user message holding `summary`. The kept tail starts
/// with a user message too; providers accept two user messages in a row, and Anthropic's API
/// joins them into one turn.
pub fn apply_summary(history: &mut Vec<Message>, split: usize, summary: &str) {
    history.splice(..split, [summary_message(summary)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(ids: &[&str]) -> Message {
        Message {
            role: Role::Assistant,
            content: ids
                .iter()
                .map(|id| ContentPart::ToolRequest {
                    id: (*id).to_owned(),
                    name: "x__y".to_owned(),
                    arguments: json!({}),
                })
                .collect(),
        }
    }

    fn results(ids: &[&str]) -> Message {
        Message {
            role: Role::Tool,
            content: ids
                .iter()
                .map(|id| ContentPart::tool_error(*id, "done"))
                .collect(),
        }
    }

    #[test]
    fn repair_answers_requests_left_open() {
        let mut history = vec![Message::user("hi"), request(&["a", "b"])];
        assert_eq!(repair(&mut history), 2);
        assert_eq!(history.len(), 3);
        assert_eq!(history[2].tool_result_ids(), vec!["a", "b"]);
        assert!(
            history[2]
                .content
                .iter()
                .all(|part| matches!(part, ContentPart::ToolResult { is_error: true, .. }))
        );
    }

    #[test]
    fn repair_completes_partial_results_and_drops_orphans() {
        let mut history = vec![
            Message::user("hi"),
            request(&["a", "b"]),
            results(&["a", "zzz"]),
            Message::assistant("ok"),
            results(&["orphan"]),
        ];
        assert_eq!(repair(&mut history), 3);
        assert_eq!(history.len(), 4);
        assert_eq!(history[2].tool_result_ids(), vec!["a", "b"]);
        assert_eq!(history[3], Message::assistant("ok"));
    }

    #[test]
    fn repair_leaves_complete_history_alone() {
        let mut history = vec![
            Message::user("hi"),
            request(&["a"]),
            results(&["a"]),
            Message::assistant("done"),
        ];
        let before = history.clone();
        assert_eq!(repair(&mut history), 0);
        assert_eq!(history, before);
    }

    #[test]
    fn summary_keeps_recent_tail_from_a_user_message() {
        let long = "x".repeat(4000);
        let mut history = vec![
            Message::user(long.clone()),
            Message::assistant(long.clone()),
            Message::user("recent question"),
            Message::assistant("recent answer"),
        ];
        let split = summary_split(&history, 100);
        assert_eq!(split, Some(2));
        apply_summary(&mut history, 2, "they talked about x");
        assert_eq!(history.len(), 3);
        assert_eq!(history[0].role, Role::User);
        let summary = history[0].text();
        assert!(
            summary.starts_with("Summary of the earlier conversation:"),
            "{summary}"
        );
        assert!(summary.ends_with("they talked about x"), "{summary}");
        assert_eq!(history[1], Message::user("recent question"));
    }

    #[test]
    fn single_exchange_cannot_be_split() {
        let history = vec![Message::user("only"), Message::assistant("one")];
        assert_eq!(summary_split(&history, 1), None);
    }
}
