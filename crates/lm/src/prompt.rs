//! Prompt formats: raw text, few-shot (solved examples before the problem), and chat
//! through the model's own Jinja chat template, rendered the way transformers'
//! `apply_chat_template` renders it.
//!
//! transformers renders with jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, a
//! `raise_exception` function, and a `tojson` that writes Python's `json.dumps` spelling:
//! `", "` and `": "` separators, no HTML escaping, non-ASCII kept). [`ChatTemplate`] sets
//! up `minijinja` the same way, with Python's string and dict methods (`.strip()`,
//! `.startswith()`, `.items()`...) from `minijinja-contrib`. Equality with transformers
//! is checked on SmolLM2's, a Llama 3 and a Qwen2.5 template
//! (`tests/fixtures/chat_templates.json`, made by `scripts/make_chat_template_fixture.py`).
//!
//! ```
//! use lm::prompt::{ChatTemplate, Message};
//!
//! let template = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//!     None,
//!     None,
//! )?;
//! let text = template.render(&[Message::user("Hi ")], true)?;
//! assert_eq!(text, "<|user|>Hi\n<|assistant|>");
//! # Ok::<(), lm::Error>(())
//! ```

use std::fmt::Write as _;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }

    /// A system message.
    pub fn system(content: &str) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the model's BOS and EOS strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are what the template sees under
    /// those names (empty when absent).
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| Error::Input(format!("the chat template does not compile: {e:#}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or("").to_owned(),
            eos_token: eos_token.unwrap_or("").to_owned(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the template opens the assistant's
    /// turn (as transformers' argument of that name).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| Error::Input(format!("the chat template failed to render: {e:#}")))
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False)`, with `indent` honoured.
fn python_tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(
    value: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        J::String(s) => write_python_string(s, out),
        J::Array(items) if items.is_empty() => out.push_str("[]"),
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if map.is_empty() => out.push_str("{}"),
        J::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_python_string(key, out);
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

/// Python's `repr` of a float, as `json.dumps` writes it.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let exponent = if f == 0.0 {
        0
    } else {
        f.abs().log10().floor() as i32
    };
    if (-4..16).contains(&exponent) {
        let text = format!("{f:?}");
        if text.contains('.') || text.contains('e') {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        // Shortest round-trip digits in Python's exponent spelling (1e-05, 1e+20).
        let text = format!("{f:e}");
        let (mantissa, exp) = text.split_once('e').expect("`{:e}` has an exponent");
        let exp: i32 = exp.parse().expect("an integer exponent");
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A solved example for few-shot prompts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The problem as the model sees it.
    pub prompt: String,
    /// The solution that follows it.
    pub answer: String,
}

/// How a problem becomes the model's input text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PromptFormat {
    /// The problem text as it is (the default: what a base model expects).
    #[default]
    Raw,
    /// `shots` solved examples, each `prompt + answer` and a blank line, then the problem.
    FewShot {
        /// How many examples (at most as many as given).
        shots: usize,
    },
    /// The model's chat template: an optional system message, `shots` examples as user
    /// and assistant turns, the problem as the last user turn, then the assistant's turn
    /// opened.
    Chat {
        /// The system message, if any (else the template's default).
        #[serde(default)]
        system: Option<String>,
        /// How many solved examples as earlier turns.
        #[serde(default)]
        shots: usize,
    },
}

impl PromptFormat {
    /// The input text for `problem`, with `examples` available for shots; chat needs the
    /// model's `template`.
    pub fn render(
        &self,
        problem: &str,
        examples: &[Example],
        template: Option<&ChatTemplate>,
    ) -> Result<String> {
        match self {
            Self::Raw => Ok(problem.to_owned()),
            Self::FewShot { shots } => {
                let mut text = String::new();
                for example in examples.iter().take(*shots) {
                    text.push_str(&example.prompt);
                    text.push_str(&example.answer);
                    text.push_str("\n\n");
                }
                text.push_str(problem);
                Ok(text)
            }
            Self::Chat { system, shots } => {
                let template = template.ok_or_else(|| {
                    Error::Input(
                        "the chat prompt format needs the model's chat template, and this \
                         model has none (no `chat_template` in tokenizer_config.json or the \
                         GGUF); use the raw or few-shot format"
                            .into(),
                    )
                })?;
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(Message::system(system));
                }
                for example in examples.iter().take(*shots) {
                    messages.push(Message::user(example.prompt.trim_end()));
                    messages.push(Message::assistant(example.answer.trim()));
                }
                messages.push(Message::user(problem.trim_end()));
                template.render(&messages, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_pythons_spelling() {
        let template =
            ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", None, None).unwrap();
        let env = &template.env;
        let rendered = env
            .get_template("chat")
            .unwrap()
            .render(minijinja::context! { x => serde_json::json!({"b": [1, 2.5, 1e-5], "a": "é<\"\n"}) })
            .unwrap();
        assert_eq!(
            rendered,
            "{\"b\": [1, 2.5, 1e-05], \"a\": \"é<\\\"\\n\"}|{\n  \"b\": [\n    1,\n    2.5,\n    1e-05\n  ],\n  \"a\": \"é<\\\"\\n\"\n}"
        );
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(123456.5), "123456.5");
        assert_eq!(python_float(-2.5e-7), "-2.5e-07");
    }

    #[test]
    fn formats_render_problems() {
        let examples = vec![Example {
            prompt: "2+2=".into(),
            answer: "4".into(),
        }];
        assert_eq!(
            PromptFormat::Raw.render("3+3=", &examples, None).unwrap(),
            "3+3="
        );
        assert_eq!(
            PromptFormat::FewShot { shots: 3 }
                .render("3+3=", &examples, None)
                .unwrap(),
            "2+2=4\n\n3+3="
        );
        let chat = PromptFormat::Chat {
            system: Some("Be brief.".into()),
            shots: 1,
        };
        let message = chat
            .render("3+3=", &examples, None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("chat template"), "{message}");
        let template = ChatTemplate::new(
            "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            chat.render("3+3=", &examples, Some(&template)).unwrap(),
            "[system]Be brief.[user]2+2=[assistant]4[user]3+3=[assistant]"
        );
    }

    #[test]
    fn template_errors_are_clear() {
        let message = ChatTemplate::new("{% for %}", None, None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("does not compile"), "{message}");
        let template =
            ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None).unwrap();
        let message = template.render(&[], false).unwrap_err().to_string();
        assert!(message.contains("roles must alternate"), "{message}");
    }
}
