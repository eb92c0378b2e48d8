//! Provider faults through aimock's control API, and the evidence in aimock's request
//! journal and in the clients' errors that each kind reached the daemon and was handled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

/// Interval between injected faults while the clients run.
const INJECT_INTERVAL: Duration = Duration::from_millis(400);
/// Share of requests that aimock's chaos disconnects while it is switched on.
const DISCONNECT_RATE: f64 = 0.5;
/// Maximum number of chat requests [`Injector::drain`] sends.
const MAX_DRAIN_REQUESTS: usize = 500;

/// A kind of provider fault that the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A queued 500 response.
    ServerError,
    /// A queued 429 response.
    RateLimit,
    /// A queued 503 response.
    Overload,
    /// aimock's `disconnectRate` chaos, which closes the connection before any response.
    Disconnect,
    /// A stream that aimock cuts after some chunks (`truncateAfterChunks`).
    TruncatedStream,
    /// A stream that aimock cuts after some time (`disconnectAfterMs`).
    TimedCut,
    /// A stream that stalls between chunks for longer than the daemon's read timeout.
    Stall,
}

impl Fault {
    /// Every kind, each of which must be seen.
    pub const ALL: [Self; 7] = [
        Self::ServerError,
        Self::RateLimit,
        Self::Overload,
        Self::Disconnect,
        Self::TruncatedStream,
        Self::TimedCut,
        Self::Stall,
    ];

    /// Returns the kind of fault aimock served in journal entry `entry`, if any.
    /// `stall_prompt` is the user message of the fixture that stalls.
    fn of(entry: &Value, stall_prompt: &str) -> Option<Self> {
        let response = &entry["response"];
        if response["chaosAction"] == "disconnect" {
            return Some(Self::Disconnect);
        }
        match response["interruptReason"].as_str() {
            Some("truncateAfterChunks") => return Some(Self::TruncatedStream),
            Some("disconnectAfterMs") => return Some(Self::TimedCut),
            _ => {}
        }
        match response["status"].as_u64() {
            Some(500) => return Some(Self::ServerError),
            Some(429) => return Some(Self::RateLimit),
            Some(503) => return Some(Self::Overload),
            _ => {}
        }
        (response["fixture"]["match"]["userMessage"] == stall_prompt).then_some(Self::Stall)
    }

    /// Returns texts of which a client-visible error caused by this kind contains one.
    /// Empty where the daemon reports several kinds in the same words.
    fn client_texts(self) -> &'static [&'static str] {
        match self {
            Self::ServerError => &["injected server error", "Injected error"],
            Self::RateLimit => &["HTTP 429"],
            Self::Overload => &["injected overload"],
            Self::Stall => &["timed out"],
            Self::Disconnect => &["error sending request"],
            // A cut stream reads as "error decoding response body" whether it was cut by
            // chunk count or by time, so only the journal distinguishes them.
            Self::TruncatedStream | Self::TimedCut => &[],
        }
    }
}

/// How often one kind of fault showed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Evidence {
    /// Journal entries in which aimock served the fault.
    pub served: usize,
    /// Served faults after which the daemon sent the same request again.
    pub retried: usize,
    /// Client-visible errors that name the fault.
    pub reported: usize,
}

/// Counts, for each kind, the faults aimock served according to `journal`, the retries
/// that followed them, and the errors in `client_errors` that name them.
pub fn evidence(
    journal: &[Value],
    client_errors: &[String],
    stall_prompt: &str,
) -> BTreeMap<Fault, Evidence> {
    let mut found: BTreeMap<Fault, Evidence> = Fault::ALL
        .iter()
        .map(|&fault| (fault, Evidence::default()))
        .collect();
    let chats: Vec<&Value> = journal
        .iter()
        .filter(|entry| {
            entry["path"]
                .as_str()
                .is_some_and(|path| path.contains("/chat/completions"))
        })
        .collect();
    for (index, entry) in chats.iter().enumerate() {
        let Some(fault) = Fault::of(entry, stall_prompt) else {
            continue;
        };
        let evidence = found.entry(fault).or_default();
        evidence.served += 1;
        if chats[index + 1..]
            .iter()
            .any(|later| later["body"] == entry["body"])
        {
            evidence.retried += 1;
        }
    }
    for (fault, evidence) in &mut found {
        evidence.reported = client_errors
            .iter()
            .filter(|error| fault.client_texts().iter().any(|text| error.contains(text)))
            .count();
    }
    found
}

/// A client of aimock's control API that checks every reply.
#[derive(Debug, Clone)]
pub struct Injector {
    http: reqwest::Client,
    url: String,
}

impl Injector {
    /// Creates a client of the aimock server at `url`.
    pub fn new(http: reqwest::Client, url: &str) -> Self {
        Self {
            http,
            url: url.to_owned(),
        }
    }

    /// Queues a one-shot error, which aimock serves to the next chat request.
    pub async fn queue_error(&self, fault: &Value) {
        let (status, body) = self
            .send(self.http.post(self.control("error")).json(fault))
            .await;
        assert_eq!(status, StatusCode::OK, "queueing {fault}: {body}");
        assert_eq!(body["queued"], true, "queueing {fault}: {body}");
    }

    /// Sets the share of chat requests that aimock disconnects before responding.
    pub async fn set_disconnect_rate(&self, rate: f64) {
        let request = self
            .http
            .post(self.control("chaos"))
            .json(&json!({"disconnectRate": rate}));
        let (status, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK, "setting chaos: {body}");
        assert_eq!(
            body["chaos"]["disconnectRate"].as_f64(),
            Some(rate),
            "chaos in effect: {body}"
        );
    }

    /// Removes the chaos settings.
    pub async fn clear_chaos(&self) {
        let (status, body) = self.send(self.http.delete(self.control("chaos"))).await;
        assert_eq!(status, StatusCode::OK, "clearing chaos: {body}");
        assert_eq!(body["chaos"], json!({}), "chaos after clearing: {body}");
    }

    /// Returns aimock's request journal, oldest entry first.
    pub async fn journal(&self) -> Vec<Value> {
        let (status, body) = self.send(self.http.get(self.control("journal"))).await;
        assert_eq!(status, StatusCode::OK, "reading the journal: {body}");
        body.as_array().cloned().expect("the journal is an array")
    }

    /// Sends chat requests straight to aimock until one succeeds, which consumes the errors
    /// that were queued and that no client used.
    pub async fn drain(&self) {
        let request = json!({
            "model": "mock-model",
            "messages": [{"role": "user", "content": "plain question"}],
        });
        for _ in 0..MAX_DRAIN_REQUESTS {
            let response = self
                .http
                .post(format!("{}/v1/chat/completions", self.url))
                .json(&request)
                .send()
                .await
                .expect("send a chat request to aimock");
            if response.status().is_success() {
                return;
            }
        }
        panic!("aimock still returns queued errors after {MAX_DRAIN_REQUESTS} requests");
    }

    fn control(&self, path: &str) -> String {
        format!("{}/__aimock/{path}", self.url)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("send to aimock's control API");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Queues a 500, 429 or 503 error every [`INJECT_INTERVAL`] and switches disconnect chaos
/// on for every third interval, while `running` is set. Returns the number of errors
/// queued.
pub async fn inject_while(injector: Injector, running: Arc<AtomicBool>) -> usize {
    let mut round = 0_usize;
    while running.load(Ordering::SeqCst) {
        let fault = match round % 4 {
            0 => json!({"status": 500, "body": {"message": "injected server error"}}),
            1 => json!({"status": 429, "body": {"message": "injected rate limit"}}),
            2 => json!({"status": 503, "body": {"message": "injected overload"}}),
            _ => json!({"status": 500}),
        };
        injector.queue_error(&fault).await;
        let rate = if round.is_multiple_of(3) {
            DISCONNECT_RATE
        } else {
            0.0
        };
        injector.set_disconnect_rate(rate).await;
        round += 1;
        tokio::time::sleep(INJECT_INTERVAL).await;
    }
    injector.clear_chaos().await;
    round
}
