//! Answering problems: greedy accuracy in one teacher-forced pass (greedy-exact), the
//! same by generation, and pass rates over sampled completions.
//!
//! Under greedy decoding a model emits a reference answer iff every answer token is the
//! argmax at its position and a stop token is the argmax right after it. So one batched
//! forward pass over `prompt + answer` decides what an autoregressive loop would, and
//! also yields the probability of the reference answer (for confidence and
//! calibration).

use eudaimonia_gate::PromptFormat;
use lm::{CausalLm, GenerateConfig, Sampling, Tokenizer};
use synth_tasks::Problem;

use crate::{Error, Result};

/// A model, its tokenizer and how prompts are shown: what answers problems.
pub struct Answerer<'a> {
    /// The model (adapters included, as installed).
    pub model: &'a CausalLm,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// How prompts are rendered.
    pub format: PromptFormat,
    /// Tokens that end an answer (EOS ids and a one-token newline).
    pub stop: Vec<i64>,
    /// Sequences per forward pass.
    pub batch: usize,
}

/// A problem's token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The rendered prompt.
    pub prompt: Vec<i64>,
    /// The reference answer (without a stop token).
    pub answer: Vec<i64>,
}

/// One problem's one-pass result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnePass {
    /// Greedy decoding would emit exactly the reference answer and stop.
    pub exact: bool,
    /// Log-probability of the reference answer followed by any stop token.
    pub log_prob: f64,
}

/// What a teacher-forced row checks besides its tokens' log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Greedy decoding emits exactly the completion and then stops (the completion is
    /// scored with a stop token appended).
    Answer,
    /// Greedy decoding emits the completion's tokens first (what follows is free).
    Prefix,
    /// Nothing: only the likelihood is wanted.
    Likelihood,
}

/// One teacher-forced row's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forced {
    /// Whether the row's [`Check`] holds (false for [`Check::Likelihood`]).
    pub holds: bool,
    /// How many leading completion tokens are the argmax at their position.
    pub matched: usize,
    /// Mean log-probability of the completion's tokens (without the stop token).
    pub mean_log_prob: f64,
}

/// A prompt, a completion and what to check: one row of [`Answerer::forced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedRow {
    /// Prompt ids.
    pub prompt: Vec<i64>,
    /// Completion ids (non-empty).
    pub completion: Vec<i64>,
    /// What to check.
    pub check: Check,
}

impl<'a> Answerer<'a> {
    /// An answerer with the model's stop tokens and batches of 256.
    pub fn new(
        model: &'a CausalLm,
        tokenizer: &'a Tokenizer,
        format: PromptFormat,
    ) -> Result<Self> {
        Ok(Self {
            model,
            tokenizer,
            format,
            stop: eudaimonia_gate::stop_tokens(model, tokenizer)?,
            batch: 256,
        })
    }

    /// Encodes problems (prompt rendered through the format).
    pub fn encode(&self, problems: &[Problem]) -> Result<Vec<Encoded>> {
        problems
            .iter()
            .map(|p| {
                let prompt = self
                    .tokenizer
                    .encode(&self.format.render(&p.prompt), false)?;
                let answer = self.tokenizer.encode(&p.answer, false)?;
                if prompt.is_empty() || answer.is_empty() {
                    return Err(Error::Data(format!(
                        "problem `{}` -> `{}` encodes to an empty prompt or answer",
                        p.prompt, p.answer
                    )));
                }
                Ok(Encoded { prompt, answer })
            })
            .collect()
    }

    /// Greedy-exactness and reference log-probability of every problem, in batched
    /// teacher-forced passes.
    pub fn one_pass(&self, encoded: &[Encoded]) -> Result<Vec<OnePass>> {
        let Some(&first_stop) = self.stop.first() else {
            return Err(Error::Config("the model has no stop token".into()));
        };
        let _guard = tch::no_grad_guard();
        let stop = tch::Tensor::from_slice(&self.stop);
        let mut out = Vec::with_capacity(encoded.len());
        for chunk in encoded.chunks(self.batch.max(1)) {
            // The answer plus one stop token: the last position's distribution says
            // whether greedy decoding stops right after the answer.
            let completions: Vec<Vec<i64>> = chunk
                .iter()
                .map(|e| e.answer.iter().copied().chain([first_stop]).collect())
                .collect();
            let pairs: Vec<(&[i64], &[i64])> = chunk
                .iter()
                .zip(&completions)
                .map(|(e, c)| (e.prompt.as_slice(), c.as_slice()))
                .collect();
            let scored = self.model.completion_log_probs(&pairs, true)?;
            // Everything below runs on all rows of the chunk at once: per-problem tensor
            // calls would cost more than the forward pass itself.
            let rows = tch::Tensor::cat(&scored.distributions.unwrap_or_default(), 0)
                .to_device(tch::Device::Cpu);
            let best = Vec::<i64>::try_from(rows.argmax(-1, false))?;
            let picked = Vec::<f32>::try_from(
                tch::Tensor::cat(&scored.token_log_probs, 0).to_device(tch::Device::Cpu),
            )?;
            let stop_log_probs =
                Vec::<f32>::try_from(rows.index_select(1, &stop).logsumexp([1], false))?;
            let mut offset = 0;
            for e in chunk {
                let n = e.answer.len();
                let last = offset + n;
                let answer_log_prob: f64 = picked[offset..last].iter().map(|&v| f64::from(v)).sum();
                let exact = best[offset..last] == e.answer[..] && self.stop.contains(&best[last]);
                out.push(OnePass {
                    exact,
                    log_prob: answer_log_prob + f64::from(stop_log_probs[last]),
                });
                offset = last + 1;
            }
        }
        Ok(out)
    }

    /// Any mix of answers, prefixes and likelihoods in batched teacher-forced passes:
    /// what scoring a model on problems and preference suites at once needs.
    pub fn forced(&self, rows: &[ForcedRow]) -> Result<Vec<Forced>> {
        let Some(&first_stop) = self.stop.first() else {
            return Err(Error::Config("the model has no stop token".into()));
        };
        if let Some(i) = rows
            .iter()
            .position(|r| r.prompt.is_empty() || r.completion.is_empty())
        {
            return Err(Error::Data(format!(
                "teacher-forced row {i} has an empty prompt or completion"
            )));
        }
        let _guard = tch::no_grad_guard();
        // Rows of similar length share a batch, so left padding costs little: the
        // search set mixes short problems with long suite items.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].prompt.len() + rows[i].completion.len());
        let mut out = vec![
            Forced {
                holds: false,
                matched: 0,
                mean_log_prob: 0.0,
            };
            rows.len()
        ];
        for chunk in order.chunks(self.batch.max(1)) {
            let completions: Vec<Vec<i64>> = chunk
                .iter()
                .map(|&i| {
                    let mut c = rows[i].completion.clone();
                    if rows[i].check == Check::Answer {
                        c.push(first_stop);
                    }
                    c
                })
                .collect();
            let pairs: Vec<(&[i64], &[i64])> = chunk
                .iter()
                .zip(&completions)
                .map(|(&i, c)| (rows[i].prompt.as_slice(), c.as_slice()))
                .collect();
            let scored = self.model.completion_log_probs(&pairs, true)?;
            let rows_tensor = tch::Tensor::cat(&scored.distributions.unwrap_or_default(), 0)
                .to_device(tch::Device::Cpu);
            let best = Vec::<i64>::try_from(rows_tensor.argmax(-1, false))?;
            let picked = Vec::<f32>::try_from(
                tch::Tensor::cat(&scored.token_log_probs, 0).to_device(tch::Device::Cpu),
            )?;
            let mut offset = 0;
            for (&i, c) in chunk.iter().zip(&completions) {
                let r = &rows[i];
                let n = r.completion.len();
                let tokens = &best[offset..offset + n];
                let holds = match r.check {
                    Check::Answer => {
                        tokens == r.completion && self.stop.contains(&best[offset + n])
                    }
                    Check::Prefix => tokens == r.completion,
                    Check::Likelihood => false,
                };
                let sum: f64 = picked[offset..offset + n]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum();
                out[i] = Forced {
                    holds,
                    matched: tokens
                        .iter()
                        .zip(&r.completion)
                        .take_while(|(a, b)| a == b)
                        .count(),
                    mean_log_prob: sum / n as f64,
                };
                offset += c.len();
            }
        }
        Ok(out)
    }

    /// The same greedy-exactness by generation (the slow path the one pass replaces):
    /// generates up to answer length + 1 tokens and checks that the answer came out and
    /// was followed by a stop token. Also the decoded texts.
    pub fn generate_exact(&self, encoded: &[Encoded]) -> Result<(Vec<bool>, Vec<String>)> {
        let mut exact = Vec::with_capacity(encoded.len());
        let mut texts = Vec::with_capacity(encoded.len());
        for chunk in encoded.chunks(self.batch.max(1)) {
            let longest = chunk.iter().map(|e| e.answer.len()).max().unwrap_or(0);
            let config = GenerateConfig {
                max_new_tokens: longest + 1,
                sampling: Sampling::Greedy,
                seed: 0,
                stop_tokens: Some(self.stop.clone()),
            };
            let prompts: Vec<Vec<i64>> = chunk.iter().map(|e| e.prompt.clone()).collect();
            let generated = tch::no_grad(|| self.model.generate(&prompts, &config))?;
            for (e, g) in chunk.iter().zip(&generated) {
                let n = e.answer.len();
                exact.push(
                    g.tokens.len() == n + 1
                        && g.tokens[..n] == e.answer[..]
                        && self.stop.contains(&g.tokens[n]),
                );
                texts.push(self.tokenizer.decode(&g.tokens, true)?);
            }
        }
        Ok((exact, texts))
    }

    /// Share of `samples` completions per problem (temperature 1, seeded) whose text
    /// verifies against the problem; `max_new_tokens` bounds each completion.
    pub fn pass_rates(
        &self,
        problems: &[Problem],
        encoded: &[Encoded],
        samples: usize,
        max_new_tokens: usize,
        seed: u64,
    ) -> Result<Vec<f64>> {
        if samples == 0 {
            return Err(Error::Config("pass rates need at least one sample".into()));
        }
        let per_batch = (self.batch / samples).max(1);
        let mut out = Vec::with_capacity(problems.len());
        for (index, (chunk, problem_chunk)) in encoded
            .chunks(per_batch)
            .zip(problems.chunks(per_batch))
            .enumerate()
        {
            let prompts: Vec<Vec<i64>> = chunk
                .iter()
                .flat_map(|e| std::iter::repeat_n(e.prompt.clone(), samples))
                .collect();
            let config = GenerateConfig {
                max_new_tokens,
                sampling: Sampling::Temperature {
                    temperature: 1.0,
                    top_p: 1.0,
                },
                seed: seed.wrapping_add(index as u64),
                stop_tokens: Some(self.stop.clone()),
            };
            let generated = tch::no_grad(|| self.model.generate(&prompts, &config))?;
            for (problem, group) in problem_chunk.iter().zip(generated.chunks(samples)) {
                let mut passed = 0usize;
                for g in group {
                    let text = self.tokenizer.decode(&g.tokens, true)?;
                    passed += usize::from(synth_tasks::verify(problem, &text));
                }
                out.push(passed as f64 / samples as f64);
            }
        }
        Ok(out)
    }
}
