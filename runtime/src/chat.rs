//! Chat templates: a list of messages to one prompt string, the way HuggingFace's
//! `apply_chat_template` does it, so a model answers chat requests in the format it was trained
//! on.
//!
//! The template is the model's own Jinja (`chat_template` in `tokenizer_config.json`), rendered
//! with `minijinja` under HF's conventions:
//! - `trim_blocks` and `lstrip_blocks` on (HF's `ImmutableSandboxedEnvironment` settings), no
//!   trailing newline kept;
//! - the context holds `messages` (each a `{role, content}` map), `add_generation_prompt`, and
//!   the special tokens of `tokenizer_config.json` (`bos_token`, `eos_token`, `unk_token`,
//!   `pad_token`);
//! - `raise_exception(message)` fails the render with that message;
//! - `tojson` writes JSON as Python's `json.dumps(..., ensure_ascii=False)` does (`", "` and
//!   `": "` separators, no HTML escaping), since templates put its output into the prompt;
//! - Python's string and dict methods (`.strip()`, `.startswith()`, `.items()`) work, through
//!   minijinja-contrib's pycompat.
//!
//! Not provided: `strftime_now` and tool or document lists (a template that needs them fails
//! with a template error naming what is missing).

use crate::error::{Error, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// One chat message, its content already flattened to text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// Bounds one render's work: a template loops over the messages, so a few million
/// instructions is far beyond any real template, while a runaway one stops quickly.
const FUEL: u64 = 50_000_000;

/// The names of `tokenizer_config.json` entries passed to templates (HF passes its special
/// tokens map).
const SPECIAL_TOKENS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// A compiled chat template with the special tokens it renders with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    specials: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).field("specials", &self.specials).finish()
    }
}

fn template_error(e: minijinja::Error) -> Error {
    // minijinja's Display names the kind, the template and the line; its detail is the rest.
    let mut msg = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        if !msg.contains("line") {
            let _ = write!(msg, " (template line {line})");
        }
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, not at the first request.
    /// `specials`: the special tokens (`bos_token`, ...) the template may use.
    pub fn new(source: impl Into<String>, specials: Vec<(&'static str, String)>) -> Result<ChatTemplate> {
        let source = source.into();
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.clone()).map_err(template_error)?;
        Ok(ChatTemplate { env, source, specials })
    }

    /// The template of a model directory: `chat_template` in `tokenizer_config.json`, with that
    /// file's special tokens. `Ok(None)` when the directory has no such file or no template.
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let path = dir.join("tokenizer_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let config = read_json(&path)?;
        let Some(source) = template_in(&config).map_err(|e| Error::Template(format!("{}: {e}", path.display())))?
        else {
            return Ok(None);
        };
        ChatTemplate::new(source, specials_in(&config))
            .map_err(|e| Error::Template(format!("{}: {e}", path.display())))
            .map(Some)
    }

    /// A template file given by the user (`--chat-template`), with the special tokens of
    /// `tokenizer_config` (a model's `tokenizer_config.json` contents) when there is one.
    pub fn from_file(path: &Path, tokenizer_config: Option<&serde_json::Value>) -> Result<ChatTemplate> {
        let source = std::fs::read_to_string(path).map_err(|e| Error::Template(format!("{}: {e}", path.display())))?;
        let specials = tokenizer_config.map(specials_in).unwrap_or_default();
        ChatTemplate::new(source, specials).map_err(|e| Error::Template(format!("{}: {e}", path.display())))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages`; with `add_generation_prompt`, ending where the assistant's
    /// reply starts.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut ctx: std::collections::BTreeMap<&str, Value> =
            self.specials.iter().map(|(name, token)| (*name, Value::from(token.as_str()))).collect();
        ctx.insert("messages", Value::from(Serde(messages)));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let ctx = Value::from(ctx);
        let tmpl = self.env.get_template("chat").map_err(template_error)?;
        tmpl.render(ctx).map_err(template_error)
    }
}

/// The embedded GPT-2 tokenizer's special tokens (`<|endoftext|>` as bos, eos and unk).
pub fn gpt2_specials() -> Vec<(&'static str, String)> {
    serde_json::from_slice(crate::tokenizer::GPT2_TOKENIZER_FILES[3].1).map(|c| specials_in(&c)).unwrap_or_default()
}

/// `tokenizer_config.json` of a directory, if it has one.
pub fn tokenizer_config(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("tokenizer_config.json");
    if path.exists() {
        read_json(&path).map(Some)
    } else {
        Ok(None)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Template(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Template(format!("{}: {e}", path.display())))
}

/// `chat_template` is a string, or (newer HF) a list of `{name, template}` of which `default`
/// is the chat one.
fn template_in(config: &serde_json::Value) -> std::result::Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string)),
        Some(_) => Err("'chat_template' must be a string or a list of named templates".into()),
    }
}

/// Special tokens are strings or `{"content": ...}` objects (AddedToken) in HF's files.
fn specials_in(config: &serde_json::Value) -> Vec<(&'static str, String)> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&name| {
            let v = config.get(name)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            Some((name, s.to_string()))
        })
        .collect()
}

/// HF's `tojson`: Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, indent, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(i) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(i * depth));
        }
    };
    // With an indent, Python separates items with "," and a newline; without, with ", ".
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match (v.as_i64().filter(|_| v.is_integer()), f64::try_from(v.clone())) {
            (Some(i), _) => {
                let _ = write!(out, "{i}");
            }
            (None, Ok(f)) if f.is_finite() => {
                // Python prints floats with a decimal point (1.0, not 1).
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
            _ => out.push_str("NaN"),
        },
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let k = key.as_str().map(str::to_string).unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&k).unwrap_or_default());
                out.push_str(": ");
                write_json(out, &v.get_item(key)?, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {}", v.kind()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            vec![],
        )
        .expect("compiles")
    }

    #[test]
    fn renders_messages_and_generation_prompt() {
        let msgs = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
        assert_eq!(
            chatml().render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!chatml().render(&msgs, false).unwrap().ends_with("assistant\n"));
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_template_errors() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}",
            vec![],
        )
        .unwrap();
        let e = t.render(&[ChatMessage::new("assistant", "x")], false).unwrap_err();
        assert!(matches!(&e, Error::Template(m) if m.contains("user first")), "{e}");
        assert!(matches!(ChatTemplate::new("{% for %}", vec![]), Err(Error::Template(_))));
    }

    #[test]
    fn runaway_templates_stop() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            vec![],
        )
        .unwrap();
        assert!(matches!(t.render(&[], false), Err(Error::Template(_))));
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ messages | tojson }}|{{ {'a': [1, 2.0, none, true], 'b': 'é<'} | tojson(indent=2) }}",
            vec![],
        )
        .unwrap();
        let out = t.render(&[ChatMessage::new("user", "\"q\"")], false).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"\\\"q\\\"\"}]|{\n  \"a\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"b\": \"é<\"\n}"
        );
    }

    #[test]
    fn python_string_methods_and_specials() {
        let t =
            ChatTemplate::new("{{ bos_token }}{{ messages[0]['content'].strip() }}{{ eos_token }}", gpt2_specials())
                .unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi  ")], false).unwrap(), "<|endoftext|>hi<|endoftext|>");
    }
}
