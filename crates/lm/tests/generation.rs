//! Generation and scoring on the tiny fixture models.

use std::path::Path;

use lm::{CausalLm, Finish, GenerateConfig, Sampling};
use tch::{Device, Kind, Tensor};

fn model(name: &str) -> CausalLm {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap()
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![5, 9, 14, 3, 27, 33, 8, 19],
        vec![12, 40, 7],
        vec![1, 60],
    ]
}

#[test]
fn greedy_exact_in_one_pass_equals_greedy_decoding() {
    for name in ["llama", "qwen2", "bitnet"] {
        let model = model(name);
        let config = GenerateConfig {
            max_new_tokens: 7,
            stop_tokens: Some(Vec::new()),
            ..GenerateConfig::default()
        };
        let generated = model.generate(&prompts(), &config).unwrap();
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = prompts()
            .into_iter()
            .zip(&generated)
            .map(|(p, g)| (p, g.tokens.clone()))
            .collect();
        let scores = model.score(&pairs).unwrap();
        for ((score, generated), (prompt, completion)) in scores.iter().zip(&generated).zip(&pairs)
        {
            assert_eq!(generated.finish, Finish::Length);
            assert!(score.greedy_exact, "{name}: {prompt:?} -> {completion:?}");
            let decoded: f64 = generated.log_probs.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (decoded - score.sum).abs() < 1e-3,
                "{name}: {decoded} vs {}",
                score.sum
            );
            assert!((score.mean - score.sum / completion.len() as f64).abs() < 1e-12);
        }
        // Change one token of each completion: no longer what greedy decoding gives.
        let changed: Vec<(Vec<i64>, Vec<i64>)> = pairs
            .iter()
            .map(|(p, c)| {
                let mut c = c.clone();
                c[2] = (c[2] + 1) % 64;
                (p.clone(), c)
            })
            .collect();
        assert!(
            model
                .score(&changed)
                .unwrap()
                .iter()
                .all(|s| !s.greedy_exact),
            "{name}"
        );
    }
}

#[test]
fn batching_with_left_padding_changes_nothing() {
    let model = model("mistral");
    let config = GenerateConfig {
        max_new_tokens: 5,
        stop_tokens: Some(Vec::new()),
        ..GenerateConfig::default()
    };
    let batched = model.generate(&prompts(), &config).unwrap();
    for (prompt, together) in prompts().into_iter().zip(&batched) {
        let alone = model.generate(&[prompt], &config).unwrap();
        assert_eq!(alone[0].tokens, together.tokens);
        for (a, b) in alone[0].log_probs.iter().zip(&together.log_probs) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_stops_at_stop_tokens() {
    let model = model("qwen2");
    let sampling = GenerateConfig {
        max_new_tokens: 12,
        sampling: Sampling::Temperature {
            temperature: 1.5,
            top_p: 0.95,
        },
        seed: 7,
        stop_tokens: Some(Vec::new()),
    };
    let first = model.generate(&prompts(), &sampling).unwrap();
    assert_eq!(first, model.generate(&prompts(), &sampling).unwrap());
    let other = model
        .generate(
            &prompts(),
            &GenerateConfig {
                seed: 8,
                ..sampling.clone()
            },
        )
        .unwrap();
    assert_ne!(first, other);
    // Stop on the first token the seeded run produced at step 3 of row 0.
    let stop = first[0].tokens[3];
    let stopped = model
        .generate(
            &prompts(),
            &GenerateConfig {
                stop_tokens: Some(vec![stop]),
                ..sampling
            },
        )
        .unwrap();
    assert_eq!(stopped[0].finish, Finish::Stop);
    assert_eq!(*stopped[0].tokens.last().unwrap(), stop);
    assert!(stopped[0].tokens.len() <= 4);
}

#[test]
fn bad_inputs_are_errors() {
    let model = model("llama");
    let message = model
        .generate(&[vec![3, 64]], &GenerateConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("token 64") && message.contains("vocabulary of 64"),
        "{message}"
    );
    assert!(model.score(&[(vec![1], vec![])]).is_err());
    let bad = GenerateConfig {
        sampling: Sampling::Temperature {
            temperature: 0.0,
            top_p: 0.9,
        },
        ..GenerateConfig::default()
    };
    assert!(model.generate(&prompts(), &bad).is_err());
}

#[test]
fn text_generation_stops_at_stop_strings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    let model = CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = lm::Tokenizer::from_dir(&dir).unwrap();
    let config = GenerateConfig {
        max_new_tokens: 10,
        stop_tokens: Some(Vec::new()),
        ..GenerateConfig::default()
    };
    let free = model
        .generate_text(&tokenizer, &["the cat sat"], &config, &[])
        .unwrap();
    let (text, generated) = &free[0];
    assert_eq!(generated.tokens.len(), 10);
    assert!(!text.is_empty());
    // Stop at a piece of what it produced unconstrained: the text ends before it.
    let piece: String = text
        .chars()
        .skip(text.chars().count() / 2)
        .take(2)
        .collect();
    let stopped = model
        .generate_text(
            &tokenizer,
            &["the cat sat"],
            &config,
            std::slice::from_ref(&piece),
        )
        .unwrap();
    let (stopped_text, stopped_generated) = &stopped[0];
    assert_eq!(stopped_generated.finish, Finish::Stop);
    assert!(stopped_generated.tokens.len() < 10);
    assert!(
        !stopped_text.contains(&piece) && text.starts_with(stopped_text.as_str()),
        "{text:?} / {stopped_text:?} / {piece:?}"
    );
}

#[test]
fn the_loss_is_differentiable_and_masks_padding() {
    let model = model("llama");
    let (ids, mask) = (
        tch::Tensor::from_slice(&[0i64, 0, 5, 9, 14, 3]).view([1, 6]),
        tch::Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1]).view([1, 6]),
    );
    let logits = model.forward(&ids, Some(&mask), None).unwrap();
    let loss = lm::next_token_loss(&logits, &ids, Some(&mask));
    // Equals the mean of the scored completion's negative log-probabilities.
    let score = &model.score(&[(vec![5], vec![9, 14, 3])]).unwrap()[0];
    assert!(
        (loss.double_value(&[]) + score.mean).abs() < 1e-4,
        "{} vs {}",
        loss.double_value(&[]),
        score.mean
    );
    // Gradients reach a leaf that takes part in the forward.
    let scale = tch::Tensor::ones([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let scaled = (&logits * &scale).sum(Kind::Float);
    scaled.backward();
    assert!(scale.grad().defined());
}

#[test]
fn long_generations_grow_the_cache_and_stay_exact() {
    // 8 prompt tokens + 90 new ones. `generate` sizes its cache for all of them; a
    // cache started with room for 10 positions must grow (four times) to the same result.
    let model = model("mistral");
    let config = GenerateConfig {
        max_new_tokens: 90,
        stop_tokens: Some(Vec::new()),
        ..GenerateConfig::default()
    };
    let prompt = prompts()[0].clone();
    let generated = model
        .generate(std::slice::from_ref(&prompt), &config)
        .unwrap();
    assert_eq!(generated[0].tokens.len(), 90);
    let mut cache = model.new_cache_with_capacity(10);
    let ids = Tensor::from_slice(&prompt).view([1, -1]);
    let mut logits = tch::no_grad(|| model.forward(&ids, None, Some(&mut cache))).unwrap();
    let mut grown = Vec::new();
    for _ in 0..90 {
        let next = logits.select(1, -1).argmax(-1, true);
        grown.push(next.int64_value(&[0, 0]));
        logits = tch::no_grad(|| model.forward(&next, None, Some(&mut cache))).unwrap();
    }
    assert_eq!(cache.len(), 98);
    assert_eq!(grown, generated[0].tokens);
    let score = &model
        .score(&[(prompt, generated[0].tokens.clone())])
        .unwrap()[0];
    assert!(score.greedy_exact);
}

#[test]
fn completion_log_probs_match_scores_across_a_padded_batch() {
    let model = model("llama");
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = vec![
        (vec![5], vec![9, 14, 3]),
        (vec![7, 8, 11, 2, 6], vec![4]),
        (vec![3, 3], vec![12, 1]),
    ];
    let borrowed: Vec<(&[i64], &[i64])> = pairs
        .iter()
        .map(|(p, c)| (p.as_slice(), c.as_slice()))
        .collect();
    let out = model.completion_log_probs(&borrowed, true).unwrap();
    let distributions = out.distributions.as_ref().unwrap();
    for (i, (prompt, completion)) in pairs.iter().enumerate() {
        // Independently: each pair alone, through the plain forward over every position.
        let sequence: Vec<i64> = prompt.iter().chain(completion).copied().collect();
        let ids = tch::Tensor::from_slice(&sequence).view([1, -1]);
        let full = model
            .forward(&ids, None, None)
            .unwrap()
            .log_softmax(-1, Kind::Float);
        let got: Vec<f32> = out.token_log_probs[i].shallow_clone().try_into().unwrap();
        assert_eq!(got.len(), completion.len());
        let d = &distributions[i];
        assert_eq!(d.size(), [completion.len() as i64, 64]);
        for (j, &token) in completion.iter().enumerate() {
            let at = (prompt.len() + j - 1) as i64;
            let want = full.double_value(&[0, at, token]) as f32;
            assert!(
                (got[j] - want).abs() < 1e-5,
                "pair {i} token {j}: {} vs {want}",
                got[j]
            );
            let row = d.get(j as i64);
            let reference = full.get(0).get(at);
            let gap = (&row - &reference).abs().max().double_value(&[]);
            assert!(
                gap < 1e-5,
                "pair {i} position {j}: distributions differ by {gap}"
            );
        }
    }
    assert!(model.completion_log_probs(&[(&[1], &[])], false).is_err());
    assert!(
        model
            .completion_log_probs(&[(&[1], &[1_000_000])], false)
            .is_err()
    );
}

#[test]
fn pooled_hidden_states_do_not_depend_on_the_batch() {
    let model = model("llama");
    let together = model.pooled_hidden(&prompts()).unwrap();
    assert_eq!(together.size(), [3, model.config().hidden_size as i64]);
    for (i, prompt) in prompts().into_iter().enumerate() {
        let alone = model.pooled_hidden(&[prompt]).unwrap();
        let gap = (alone.get(0) - together.get(i as i64))
            .abs()
            .max()
            .double_value(&[]);
        assert!(gap < 1e-5, "prompt {i}: {gap}");
    }
    // Different prompts read differently.
    let gap = (together.get(0) - together.get(1))
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap > 1e-3, "{gap}");
    assert!(model.pooled_hidden(&[vec![]]).is_err());
}
