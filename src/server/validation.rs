//! Every request is checked and bounded here, before it reaches the engine. Each
//! failure is a 400 with a message that names the field and the limit.

use super::openai::{
    ChatCompletionRequest, CompletionRequest, ContentIn, PromptIn, SamplingFields,
};
use crate::runtime::engine::{ChatMessage, Prompt, SamplingParams};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// At most this many stop sequences, as in the OpenAI API.
const MAX_STOPS: usize = 4;
const MAX_STOP_LEN: usize = 256;
/// Default completion length for `/v1/completions` (the OpenAI default).
const COMPLETION_DEFAULT_TOKENS: u32 = 16;

/// A request that failed validation: the message and the offending parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub param: Option<&'static str>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        param: Some(param),
    }
}

/// Limits that depend on how the node was started.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Context length per sequence: max_tokens may not exceed it.
    pub ctx: u32,
}

fn sampling(
    limits: Limits,
    default_max: u32,
    input: SamplingFields,
) -> Result<SamplingParams, Invalid> {
    let SamplingFields {
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        n,
        ..
    } = input;
    if let Some(n) = n {
        if n != 1 {
            return Err(invalid(
                "n",
                format!("n={n} is not supported; this server returns one choice (n=1)"),
            ));
        }
    }
    let max_tokens = match max_tokens {
        None => default_max,
        Some(0) => return Err(invalid("max_tokens", "max_tokens must be at least 1")),
        Some(m) if m > u64::from(limits.ctx) => {
            return Err(invalid(
                "max_tokens",
                format!(
                    "max_tokens={m} exceeds the context length of {} tokens",
                    limits.ctx
                ),
            ))
        }
        Some(m) => m as u32,
    };
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(
            "temperature",
            format!("temperature={temperature} is outside 0 to 2"),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("top_p", format!("top_p={top_p} is outside (0, 1]")));
    }
    let seed = seed.map(|s| u32::try_from(s.rem_euclid(1 << 32)).expect("reduced modulo 2^32"));
    let stop = stop.map(super::openai::Stop::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(invalid(
            "stop",
            format!("at most {MAX_STOPS} stop sequences are allowed"),
        ));
    }
    if stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
        return Err(invalid(
            "stop",
            format!("a stop sequence may be at most {MAX_STOP_LEN} bytes"),
        ));
    }
    Ok(SamplingParams {
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed,
        stop,
    })
}

/// Check a chat completion request.
pub fn chat(
    req: ChatCompletionRequest,
    limits: Limits,
) -> Result<(Prompt, SamplingParams), Invalid> {
    if req.messages.is_empty() {
        return Err(invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(invalid(
                    "messages",
                    format!("messages[{i}].role '{other}' is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(ContentIn::Text(t)) => t,
            Some(ContentIn::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(invalid(
                            "messages",
                            format!(
                                "messages[{i}] has a '{}' part; only text parts are supported",
                                p.kind
                            ),
                        ));
                    }
                    text.push_str(&p.text.unwrap_or_default());
                }
                text
            }
        };
        if content.contains('\0') {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content contains a NUL character"),
            ));
        }
        messages.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    let mut fields = req.sampling;
    fields.max_tokens = req.max_completion_tokens.or(fields.max_tokens);
    let params = sampling(limits, limits.ctx, fields)?;
    Ok((Prompt::Chat(messages), params))
}

/// Check a completion request.
pub fn completion(
    req: CompletionRequest,
    limits: Limits,
) -> Result<(Prompt, SamplingParams), Invalid> {
    let prompt = match req.prompt {
        PromptIn::One(p) => p,
        PromptIn::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptIn::Many(_) => {
            return Err(invalid(
                "prompt",
                "give one prompt string; batches of prompts are not supported",
            ))
        }
    };
    if prompt.is_empty() {
        return Err(invalid("prompt", "the prompt is empty"));
    }
    let params = sampling(limits, COMPLETION_DEFAULT_TOKENS, req.sampling)?;
    Ok((Prompt::Text(prompt), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_json(v: serde_json::Value) -> Result<(Prompt, SamplingParams), Invalid> {
        chat(serde_json::from_value(v).unwrap(), Limits { ctx: 2048 })
    }

    #[test]
    fn bounds_are_enforced_with_named_parameters() {
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
        assert!(chat_json(serde_json::json!({"messages": msgs})).is_ok());
        assert_eq!(
            chat_json(serde_json::json!({"messages": []}))
                .unwrap_err()
                .param,
            Some("messages")
        );
        assert_eq!(
            chat_json(serde_json::json!({"messages": msgs, "max_tokens": 100000}))
                .unwrap_err()
                .param,
            Some("max_tokens")
        );
        assert_eq!(
            chat_json(serde_json::json!({"messages": msgs, "temperature": 3.0}))
                .unwrap_err()
                .param,
            Some("temperature")
        );
        assert_eq!(
            chat_json(serde_json::json!({"messages": msgs, "n": 2}))
                .unwrap_err()
                .param,
            Some("n")
        );
        assert_eq!(
            chat_json(serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}))
                .unwrap_err()
                .param,
            Some("messages")
        );
    }

    #[test]
    fn content_parts_and_developer_role_are_accepted() {
        let (prompt, params) = chat_json(serde_json::json!({
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}, {"role": "user", "content": "hi"}],
            "stop": "END", "seed": -1
        }))
        .unwrap();
        let Prompt::Chat(m) = prompt else { panic!() };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[0].content, "be brief");
        assert_eq!(params.stop, vec!["END"]);
        assert_eq!(params.seed, Some(u32::MAX));
    }
}
