//! Batched generation with a KV cache, and one-pass scoring of completions.
//!
//! Prompts of different lengths are left-padded into one batch; positions count real
//! tokens only, so padding changes nothing. Sampling (greedy, or temperature with top-p)
//! runs on the CPU from a seeded generator of this crate, so a seeded call is
//! reproducible on any device and thread count.

use tch::{Kind, Tensor};

use crate::model::CausalLm;
use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first of equals).
    Greedy,
    /// Sample from `softmax(logits / temperature)`, keeping the smallest set of most
    /// likely tokens whose probability reaches `top_p` (1.0 keeps all).
    Temperature {
        /// Temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
    },
}

/// Settings of [`CausalLm::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Most new tokens per sequence. Default 32.
    pub max_new_tokens: usize,
    /// Token choice. Default greedy.
    pub sampling: Sampling,
    /// Seed of the sampler. Default 0.
    pub seed: u64,
    /// Tokens that end a sequence (kept in its output). Default: the config's EOS ids.
    pub stop_tokens: Option<Vec<i64>>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It produced a stop token.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// New tokens (a stop token, if any, is the last).
    pub tokens: Vec<i64>,
    /// Log-probability of each new token under the distribution it was drawn from
    /// (temperature applied, before top-p truncation; raw logits for greedy).
    pub log_probs: Vec<f32>,
    /// Why it ended.
    pub finish: Finish,
}

/// The score of a completion given its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Sum of the completion tokens' log-probabilities.
    pub sum: f64,
    /// Their mean.
    pub mean: f64,
    /// Whether greedy decoding from the prompt would produce exactly this completion:
    /// every completion token is the argmax (first of equals) at its position.
    pub greedy_exact: bool,
    /// Per-token log-probabilities.
    pub token_log_probs: Vec<f32>,
}

/// A small seeded generator (splitmix64 stream) for sampling.
struct Sampler(u64);

impl Sampler {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Left-pads sequences into `[batch, longest]` ids and mask.
pub(crate) fn left_pad(sequences: &[Vec<i64>], pad: i64) -> Result<(Tensor, Tensor)> {
    let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
    if sequences.is_empty() || longest == 0 {
        return Err(Error::Input(
            "nothing to run: empty batch or empty sequences".into(),
        ));
    }
    if let Some(i) = sequences.iter().position(Vec::is_empty) {
        return Err(Error::Input(format!("sequence {i} is empty")));
    }
    let mut ids = Vec::with_capacity(sequences.len() * longest);
    let mut mask = Vec::with_capacity(sequences.len() * longest);
    for sequence in sequences {
        let padding = longest - sequence.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(sequence.iter().copied()));
        mask.extend(
            std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, sequence.len())),
        );
    }
    let shape = [sequences.len() as i64, longest as i64];
    Ok((
        Tensor::from_slice(&ids).view(shape),
        Tensor::from_slice(&mask).view(shape),
    ))
}

impl CausalLm {
    fn pad_id(&self) -> i64 {
        let config = self.config();
        config
            .pad_token_id
            .or(config.eos_token_ids.first().copied())
            .unwrap_or(0)
    }

    fn check_ids(&self, sequences: &[Vec<i64>]) -> Result<()> {
        let vocab = self.config().vocab_size as i64;
        for (i, sequence) in sequences.iter().enumerate() {
            if let Some(&bad) = sequence.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(Error::Input(format!(
                    "sequence {i} holds token {bad}, outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// Continues every prompt (token ids) in one batch.
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        config: &GenerateConfig,
    ) -> Result<Vec<Generated>> {
        self.generate_until(prompts, config, &|_, _| false)
    }

    /// Continues prompts and decodes the results; a sequence also stops as soon as its
    /// text contains one of `stop_strings` (the text is cut before it).
    pub fn generate_text(
        &self,
        tokenizer: &crate::Tokenizer,
        prompts: &[&str],
        config: &GenerateConfig,
        stop_strings: &[String],
    ) -> Result<Vec<(String, Generated)>> {
        let encoded: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| tokenizer.encode(p, true))
            .collect::<Result<_>>()?;
        let config = GenerateConfig {
            stop_tokens: Some(
                config
                    .stop_tokens
                    .clone()
                    .unwrap_or_else(|| tokenizer.eos.clone()),
            ),
            ..config.clone()
        };
        let contains_stop = |tokens: &[i64]| -> bool {
            !stop_strings.is_empty()
                && tokenizer
                    .decode(tokens, true)
                    .is_ok_and(|text| stop_strings.iter().any(|s| text.contains(s.as_str())))
        };
        let generated =
            self.generate_until(&encoded, &config, &|_, tokens| contains_stop(tokens))?;
        generated
            .into_iter()
            .map(|g| {
                let mut text = tokenizer.decode(&g.tokens, true)?;
                if let Some(cut) = stop_strings
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    text.truncate(cut);
                }
                Ok((text, g))
            })
            .collect()
    }

    /// [`CausalLm::generate`] with an extra stop rule: `should_stop(row, new tokens)` is
    /// asked after every token; `true` ends that sequence with [`Finish::Stop`].
    pub fn generate_until(
        &self,
        prompts: &[Vec<i64>],
        config: &GenerateConfig,
        should_stop: &dyn Fn(usize, &[i64]) -> bool,
    ) -> Result<Vec<Generated>> {
        self.check_ids(prompts)?;
        if let Sampling::Temperature { temperature, top_p } = config.sampling
            && !(temperature > 0.0 && top_p > 0.0 && top_p <= 1.0)
        {
            return Err(Error::Input(format!(
                "temperature {temperature} and top_p {top_p}: expected temperature > 0 and 0 < top_p <= 1"
            )));
        }
        let _guard = tch::no_grad_guard();
        let stop = config
            .stop_tokens
            .clone()
            .unwrap_or_else(|| self.config().eos_token_ids.clone());
        let (ids, mask) = left_pad(prompts, self.pad_id())?;
        // The last token is sampled but never fed back.
        let positions = ids.size()[1] as usize + config.max_new_tokens.saturating_sub(1);
        let mut cache = self.new_cache_with_capacity(positions);
        let mut logits = self.forward_positions(&ids, Some(&mask), Some(&mut cache), true)?;
        let mut sampler = Sampler(config.seed);
        let mut out: Vec<Generated> = prompts
            .iter()
            .map(|_| Generated {
                tokens: Vec::new(),
                log_probs: Vec::new(),
                finish: Finish::Length,
            })
            .collect();
        let mut done = vec![false; prompts.len()];
        for step in 0..config.max_new_tokens {
            let last = logits.select(1, -1);
            // Greedy choices are made where the logits are (one vectorised pass); sampling
            // copies each row to the CPU for the seeded sampler.
            let greedy = match config.sampling {
                Sampling::Greedy => {
                    let log_probs = last.log_softmax(-1, Kind::Float);
                    let best = log_probs.argmax(-1, true);
                    let best_log_probs = log_probs.gather(1, &best, false);
                    Some((
                        Vec::<i64>::try_from(best.flatten(0, -1).to_device(tch::Device::Cpu))?,
                        Vec::<f32>::try_from(
                            best_log_probs.flatten(0, -1).to_device(tch::Device::Cpu),
                        )?,
                    ))
                }
                Sampling::Temperature { .. } => None,
            };
            let last = last.to_device(tch::Device::Cpu);
            let mut next = Vec::with_capacity(prompts.len());
            for (row, generated) in out.iter_mut().enumerate() {
                if done[row] {
                    next.push(self.pad_id());
                    continue;
                }
                let (token, log_prob) = match &greedy {
                    Some((tokens, log_probs)) => (tokens[row], log_probs[row]),
                    None => {
                        let row_logits = Vec::<f32>::try_from(last.get(row as i64))?;
                        choose(&row_logits, config.sampling, &mut sampler)
                    }
                };
                generated.tokens.push(token);
                generated.log_probs.push(log_prob);
                if stop.contains(&token) || should_stop(row, &generated.tokens) {
                    generated.finish = Finish::Stop;
                    done[row] = true;
                }
                next.push(token);
            }
            if done.iter().all(|&d| d) || step + 1 == config.max_new_tokens {
                break;
            }
            let next_ids = Tensor::from_slice(&next).view([prompts.len() as i64, 1]);
            // Finished rows keep running (the batch stays rectangular) on masked padding.
            let step_mask: Vec<i64> = done.iter().map(|&d| i64::from(!d)).collect();
            let step_mask = Tensor::from_slice(&step_mask).view([prompts.len() as i64, 1]);
            logits = self.forward_positions(&next_ids, Some(&step_mask), Some(&mut cache), true)?;
        }
        drop(cache);
        // The KV cache and per-step buffers are free now: return them to the system.
        crate::device::release_free_memory();
        Ok(out)
    }

    /// Scores completions given prompts in one teacher-forced forward pass: the
    /// log-probability of each completion token, their sum and mean, and whether greedy
    /// decoding would reproduce the completion exactly.
    pub fn score(&self, pairs: &[(Vec<i64>, Vec<i64>)]) -> Result<Vec<Score>> {
        let _guard = tch::no_grad_guard();
        let borrowed: Vec<(&[i64], &[i64])> = pairs
            .iter()
            .map(|(p, c)| (p.as_slice(), c.as_slice()))
            .collect();
        let out = self.completion_log_probs(&borrowed, true)?;
        let distributions = out.distributions.unwrap_or_default();
        let mut scores = Vec::with_capacity(pairs.len());
        for ((token_log_probs, distribution), (_, completion)) in
            out.token_log_probs.iter().zip(&distributions).zip(pairs)
        {
            let token_log_probs =
                Vec::<f32>::try_from(token_log_probs.to_device(tch::Device::Cpu))?;
            let best =
                Vec::<i64>::try_from(distribution.argmax(-1, false).to_device(tch::Device::Cpu))?;
            let greedy_exact = best == *completion;
            let sum: f64 = token_log_probs.iter().map(|&v| f64::from(v)).sum();
            scores.push(Score {
                sum,
                mean: sum / completion.len() as f64,
                greedy_exact,
                token_log_probs,
            });
        }
        Ok(scores)
    }
}

/// Per-completion log-probabilities from one teacher-forced forward pass, kept on the
/// model's device and differentiable (no gradient guard): what policy-gradient training
/// needs.
#[derive(Debug)]
pub struct CompletionLogProbs {
    /// Per completion, the log-probability of each of its tokens, `[T]` (f32).
    pub token_log_probs: Vec<Tensor>,
    /// Per completion, the full log-distribution at each of its positions, `[T, V]`
    /// (f32), when asked for.
    pub distributions: Option<Vec<Tensor>>,
}

impl CausalLm {
    /// Log-probabilities of completions given prompts in one teacher-forced pass,
    /// differentiable with respect to anything the forward depends on (adapters, for
    /// instance). With `distributions`, also every position's full log-distribution.
    pub fn completion_log_probs(
        &self,
        pairs: &[(&[i64], &[i64])],
        distributions: bool,
    ) -> Result<CompletionLogProbs> {
        if let Some(i) = pairs.iter().position(|(p, c)| p.is_empty() || c.is_empty()) {
            return Err(Error::Input(format!(
                "pair {i}: prompt and completion must both be non-empty"
            )));
        }
        let sequences: Vec<Vec<i64>> = pairs
            .iter()
            .map(|(p, c)| p.iter().chain(c.iter()).copied().collect())
            .collect();
        self.check_ids(&sequences)?;
        let (ids, mask) = left_pad(&sequences, self.pad_id())?;
        let hidden = self.hidden_states(&ids, Some(&mask), None)?;
        let size = hidden.size();
        let (positions, width) = (size[1], size[2]);
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        // Every predicting position of every completion, as rows of the flattened
        // `[batch * positions, hidden]` states: only those reach the output projection
        // (prompt positions never need the vocabulary), and one gather keeps the
        // backward pass to a single scatter, where slicing per completion would make each
        // slice's backward allocate a whole-batch gradient.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut lengths = Vec::with_capacity(pairs.len());
        for (row, (prompt, completion)) in pairs.iter().enumerate() {
            let offset = longest - sequences[row].len();
            // The token at sequence position p is predicted from position p - 1.
            let start = (offset + prompt.len() - 1) as i64;
            let base = row as i64 * positions;
            rows.extend((0..completion.len() as i64).map(|j| base + start + j));
            targets.extend_from_slice(completion);
            lengths.push(completion.len() as i64);
        }
        let device = hidden.device();
        let rows = Tensor::from_slice(&rows).to_device(device);
        let targets = Tensor::from_slice(&targets).to_device(device);
        let chosen = hidden.reshape([-1, width]).index_select(0, &rows);
        let log_probs = self.project(&chosen).log_softmax(-1, Kind::Float);
        let picked = log_probs
            .gather(1, &targets.unsqueeze(1), false)
            .squeeze_dim(1);
        let token_log_probs = picked.split_with_sizes(&lengths, 0);
        let all = distributions.then(|| log_probs.split_with_sizes(&lengths, 0));
        Ok(CompletionLogProbs {
            token_log_probs,
            distributions: all,
        })
    }
}

impl CausalLm {
    /// Each sequence's mean final-normed hidden state over its tokens, `[batch, hidden]`
    /// (f32, no gradient): a fixed-size summary of a prompt as the model reads it, for
    /// routers and nearest-centroid classifiers.
    pub fn pooled_hidden(&self, sequences: &[Vec<i64>]) -> Result<Tensor> {
        if let Some(i) = sequences.iter().position(Vec::is_empty) {
            return Err(Error::Input(format!("sequence {i} is empty")));
        }
        self.check_ids(sequences)?;
        let _guard = tch::no_grad_guard();
        let (ids, mask) = left_pad(sequences, self.pad_id())?;
        let hidden = self.final_norm(&self.hidden_states(&ids, Some(&mask), None)?);
        let mask = mask
            .to_device(hidden.device())
            .to_kind(Kind::Float)
            .unsqueeze(-1);
        let summed = (hidden.to_kind(Kind::Float) * &mask).sum_dim_intlist(1, false, Kind::Float);
        Ok(summed / mask.sum_dim_intlist(1, false, Kind::Float))
    }
}

/// Mean next-token cross-entropy of `logits` (`[batch, positions, vocab]`) against
/// `input_ids` shifted by one, over positions where both the token and its successor
/// are real (`attention_mask` 1; all positions when `None`). Differentiable.
pub fn next_token_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Tensor {
    let positions = logits.size()[1];
    let predictions = logits.narrow(1, 0, positions - 1);
    let targets = input_ids
        .narrow(1, 1, positions - 1)
        .to_device(logits.device());
    let log_probs = predictions.log_softmax(-1, Kind::Float);
    let picked = -log_probs
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    match attention_mask {
        Some(mask) => {
            // A position counts when both the predicting token and its target are real.
            let mask = mask.to_device(logits.device()).to_kind(Kind::Float);
            let weights = mask.narrow(1, 1, positions - 1) * mask.narrow(1, 0, positions - 1);
            (picked * &weights).sum(Kind::Float) / weights.sum(Kind::Float).clamp_min(1.0)
        }
        None => picked.mean(Kind::Float),
    }
}

/// Picks the next token from one row of logits; returns it and its log-probability.
fn choose(logits: &[f32], sampling: Sampling, sampler: &mut Sampler) -> (i64, f32) {
    let log_softmax = |scale: f64| -> Vec<f64> {
        let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / scale).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scaled.iter().map(|v| (v - max).exp()).sum();
        let log_total = max + total.ln();
        scaled.iter().map(|v| v - log_total).collect()
    };
    match sampling {
        Sampling::Greedy => {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            (best as i64, log_softmax(1.0)[best] as f32)
        }
        Sampling::Temperature { temperature, top_p } => {
            let log_p = log_softmax(temperature);
            if top_p >= 1.0 {
                // Every token is kept: walk the vocabulary in index order instead of
                // sorting it (a sort per token dominates sampling over large vocabularies).
                let mut target = sampler.uniform();
                for (i, lp) in log_p.iter().enumerate() {
                    target -= lp.exp();
                    if target <= 0.0 {
                        return (i as i64, *lp as f32);
                    }
                }
                // Rounding left a sliver of mass: the most likely token takes it.
                let best = (0..log_p.len())
                    .max_by(|&a, &b| log_p[a].total_cmp(&log_p[b]).then(b.cmp(&a)))
                    .expect("a non-empty vocabulary");
                return (best as i64, log_p[best] as f32);
            }
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| log_p[b].total_cmp(&log_p[a]).then(a.cmp(&b)));
            let mut kept = Vec::new();
            let mut mass = 0.0;
            for &i in &order {
                kept.push(i);
                mass += log_p[i].exp();
                if mass >= top_p {
                    break;
                }
            }
            let mut target = sampler.uniform() * mass;
            for &i in &kept {
                target -= log_p[i].exp();
                if target <= 0.0 {
                    return (i as i64, log_p[i] as f32);
                }
            }
            let last = *kept.last().expect("at least one token kept");
            (last as i64, log_p[last] as f32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_vocabulary_sampling_follows_the_distribution() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, 0.5];
        let total: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        // The index-order walk (top_p 1) and the sorted nucleus walk (top_p just under
        // 1, which keeps every token here) must both draw from softmax(logits).
        for top_p in [1.0, 0.999_999] {
            let sampling = Sampling::Temperature {
                temperature: 1.0,
                top_p,
            };
            let mut sampler = Sampler(42);
            let mut counts = [0usize; 5];
            let draws = 40_000;
            for _ in 0..draws {
                let (token, log_p) = choose(&logits, sampling, &mut sampler);
                let expected = f64::from(logits[token as usize]).exp() / total;
                assert!((f64::from(log_p) - expected.ln()).abs() < 1e-5);
                counts[token as usize] += 1;
            }
            for (i, &count) in counts.iter().enumerate() {
                let expected = f64::from(logits[i]).exp() / total;
                let observed = count as f64 / draws as f64;
                assert!(
                    (observed - expected).abs() < 0.01,
                    "top_p {top_p}, token {i}: {observed:.4} vs {expected:.4}"
                );
            }
        }
    }

    #[test]
    fn sampling_respects_top_p_and_temperature() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let mut sampler = Sampler(1);
        assert_eq!(choose(&logits, Sampling::Greedy, &mut sampler).0, 0);
        // A tiny top-p keeps only the best token.
        for _ in 0..20 {
            let (token, _) = choose(
                &logits,
                Sampling::Temperature {
                    temperature: 1.0,
                    top_p: 0.1,
                },
                &mut sampler,
            );
            assert_eq!(token, 0);
        }
        // Full nucleus at temperature 1 follows softmax frequencies.
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[choose(
                &logits,
                Sampling::Temperature {
                    temperature: 1.0,
                    top_p: 1.0,
                },
                &mut sampler,
            )
            .0 as usize] += 1;
        }
        let p0 = counts[0] as f64 / 20_000.0;
        assert!((p0 - 0.6439).abs() < 0.02, "{counts:?}");
        let (_, log_p) = choose(&logits, Sampling::Greedy, &mut sampler);
        assert!((f64::from(log_p) - 0.6439f64.ln()).abs() < 1e-3);
    }

    #[test]
    fn left_padding_layout() {
        let (ids, mask) = left_pad(&[vec![5, 6, 7], vec![9]], 0).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap(),
            vec![5, 6, 7, 0, 0, 9]
        );
        assert_eq!(
            Vec::<i64>::try_from(mask.flatten(0, -1)).unwrap(),
            vec![1, 1, 1, 0, 0, 1]
        );
        assert!(left_pad(&[vec![1], vec![]], 0).is_err());
    }
}
