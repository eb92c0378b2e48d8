//! The agent: the message model, LLM providers and the tool-calling loop.

mod genai_provider;
pub mod history;
pub mod message;
pub mod provider;
mod retry;
pub mod turn;

use std::sync::{Arc, Mutex};

pub use genai_provider::GenaiProvider;
pub use message::{ContentPart, Message, Role};
pub use provider::{
    Completion, CompletionFuture, CompletionRequest, Provider, ProviderError, TextSink, ToolChoice,
    Usage,
};
pub use retry::DEFAULT_MAX_RETRIES;
pub use turn::{Turn, TurnEnd, TurnEvent, TurnOutcome, TurnSettings};

use crate::config::model::ProviderConfig;
use crate::config::{ProviderKind, Snapshot};

/// The provider for the current config, rebuilt when the config generation changes, so a
/// provider or model edit applies to the next turn while HTTP connections are reused
/// between turns of the same generation.
#[derive(Debug, Default)]
pub struct ProviderPool {
    cached: Mutex<Option<(u64, String, Arc<GenaiProvider>)>>,
}

impl ProviderPool {
    /// Returns the provider named by `snapshot.config.provider`.
    pub fn provider_for(&self, snapshot: &Snapshot) -> Result<Arc<GenaiProvider>, ProviderError> {
        let name = &snapshot.config.provider;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, cached_name, provider)) = cached.as_ref()
            && *generation == snapshot.generation
            && cached_name == name
        {
            return Ok(provider.clone());
        }
        let (kind, config) = resolve(snapshot, name)?;
        let provider = Arc::new(GenaiProvider::new(kind, &config)?);
        *cached = Some((snapshot.generation, name.clone(), provider.clone()));
        Ok(provider)
    }
}

/// Finds the kind and settings of provider `name`. Validation guarantees one exists.
fn resolve(
    snapshot: &Snapshot,
    name: &str,
) -> Result<(ProviderKind, ProviderConfig), ProviderError> {
    let config = snapshot
        .config
        .providers
        .get(name)
        .cloned()
        .unwrap_or_default();
    let kind = config
        .kind
        .or_else(|| ProviderKind::from_name(name))
        .ok_or_else(|| {
            ProviderError::InvalidResponse(format!(
                "provider {name} has no kind; set providers.{name}.kind"
            ))
        })?;
    Ok((kind, config))
}

/// Builds the settings of a turn from the config snapshot.
pub fn turn_settings(snapshot: &Snapshot) -> TurnSettings {
    let config = &snapshot.config;
    let provider = config.providers.get(&config.provider);
    TurnSettings {
        model: config.model.clone(),
        system_prompt: config.agent.system_prompt.clone(),
        tool_choice: config.agent.tool_choice.clone(),
        later_tool_choice: match &config.agent.tool_choice {
            ToolChoice::Required | ToolChoice::Tool(_) => ToolChoice::Auto,
            other => other.clone(),
        },
        max_steps: config.agent.max_steps,
        max_tool_output_chars: config.agent.max_tool_output_chars,
        context_limit: provider.and_then(|p| p.context_limit).map(u64::from),
        summarize_threshold: config.agent.summarize_threshold,
        max_retries: provider
            .and_then(|p| p.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES),
        allowed_extensions: None,
    }
}
