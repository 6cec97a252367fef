//! The planner recovers planted structure: a toy policy whose domains' rewards depend on
//! disjoint blocks of z (three clusters of 3, 2 and 2 domains) gets its clusters back,
//! N = 3, through the real path (REINFORCE gradients from sampled rollouts, bootstrap
//! silhouettes).

use reinforce_kl::{Policy, Scores};
use self_eval::gradients::policy_gradients;
use self_eval::planner::{DomainMeasurement, PlannerConfig, plan};
use synth_tasks::Rng;
use tch::{Kind, Tensor};

const BLOCK: i64 = 8;
const VOCAB: i64 = 6;

/// One-token completions with logits `A_d z` for domain `d`.
struct Toy {
    z: Tensor,
    matrices: Vec<Tensor>,
}

impl Toy {
    fn new(clusters: &[usize], seed: i64) -> Self {
        tch::manual_seed(seed);
        let blocks = *clusters.iter().max().unwrap() as i64 + 1;
        let width = blocks * BLOCK;
        let mut bases = Vec::new();
        for _ in 0..blocks {
            bases.push(Tensor::randn(
                [VOCAB, BLOCK],
                (Kind::Float, tch::Device::Cpu),
            ));
        }
        let matrices = clusters
            .iter()
            .map(|&c| {
                // The cluster's block plus a little domain-specific noise in it; zero
                // elsewhere: its gradients live in that block.
                let block = &bases[c]
                    + Tensor::randn([VOCAB, BLOCK], (Kind::Float, tch::Device::Cpu)) * 0.2;
                let m = Tensor::zeros([VOCAB, width], (Kind::Float, tch::Device::Cpu));
                m.narrow(1, c as i64 * BLOCK, BLOCK).copy_(&block);
                m
            })
            .collect();
        Self {
            z: Tensor::zeros([width], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
            matrices,
        }
    }

    fn log_probs(&self, domain: usize) -> Tensor {
        self.matrices[domain]
            .matmul(&self.z)
            .log_softmax(0, Kind::Float)
    }
}

impl Policy for Toy {
    type Prompt = usize;

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.z.shallow_clone()]
    }

    fn sample(
        &mut self,
        prompts: &[&usize],
        samples: usize,
        seed: u64,
    ) -> reinforce_kl::Result<Vec<Vec<Vec<i64>>>> {
        let mut rng = Rng::new(seed);
        Ok(prompts
            .iter()
            .map(|&&d| {
                let p = Vec::<f32>::try_from(tch::no_grad(|| self.log_probs(d).exp())).unwrap();
                (0..samples)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f32 / (1u64 << 53) as f32;
                        let mut acc = 0.0;
                        let t = p.iter().position(|&x| {
                            acc += x;
                            u < acc
                        });
                        vec![t.unwrap_or(p.len() - 1) as i64]
                    })
                    .collect()
            })
            .collect())
    }

    fn score(
        &mut self,
        prompts: &[&usize],
        completions: &[(usize, Vec<i64>)],
        _: bool,
    ) -> reinforce_kl::Result<Scores> {
        Ok(Scores {
            token_log_probs: completions
                .iter()
                .map(|(i, c)| {
                    self.log_probs(*prompts[*i])
                        .index_select(0, &Tensor::from_slice(c))
                })
                .collect(),
            distributions: None,
        })
    }

    fn score_reference(
        &mut self,
        prompts: &[&usize],
        completions: &[(usize, Vec<i64>)],
        d: bool,
    ) -> reinforce_kl::Result<Scores> {
        let scores = self.score(prompts, completions, d)?;
        Ok(Scores {
            token_log_probs: scores.token_log_probs.iter().map(Tensor::detach).collect(),
            distributions: None,
        })
    }
}

/// Each domain's REINFORCE gradients over `problems` rollout groups (token 0 is the
/// right answer everywhere).
fn measure(
    toy: &mut Toy,
    domains: usize,
    problems: usize,
    accuracy: f64,
) -> Vec<DomainMeasurement> {
    (0..domains)
        .map(|d| {
            let reward = |_: usize, c: &[i64]| if c[0] == 0 { 1.0 } else { -1.0 };
            DomainMeasurement {
                domain: format!("d{d}"),
                accuracy,
                gradients: policy_gradients(toy, &vec![d; problems], &reward, 8, 100 + d as u64)
                    .unwrap(),
            }
        })
        .collect()
}

#[test]
fn planted_clusters_are_recovered() {
    let clusters = [0usize, 0, 0, 1, 1, 2, 2];
    let mut toy = Toy::new(&clusters, 3);
    let measurements = measure(&mut toy, clusters.len(), 32, 0.3);
    let config = PlannerConfig {
        bootstrap: 100,
        seed: 1,
        ..PlannerConfig::default()
    };
    let record = plan(&measurements, &config, None).unwrap();
    let mut found: Vec<Vec<String>> = record
        .plan
        .expert_definitions
        .iter()
        .map(|e| e.domains.clone())
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![vec!["d0", "d1", "d2"], vec!["d3", "d4"], vec!["d5", "d6"]],
        "{}",
        record.plan.reasoning
    );
    assert_eq!(record.plan.num_experts, 3);
    // The numbers behind it: within-cluster cosines high, across near zero, and the
    // bootstrap agrees.
    let m = &record.measurements;
    assert!(
        m.cosine[0][1] > 0.5 && m.cosine[3][4] > 0.5,
        "{:?}",
        m.cosine
    );
    assert!(m.cosine[0][3].abs() < 0.2, "{:?}", m.cosine);
    assert!(m.co_assignment[0][2] > 0.9 && m.co_assignment[0][5] < 0.1);
    assert!(
        record
            .plan
            .expert_definitions
            .iter()
            .all(|e| e.rationale.contains("cosine"))
    );
    assert_eq!(record.source, "measured");
}

#[test]
fn more_clusters_than_allowed_merge_the_most_similar() {
    // Five planted clusters but at most three experts: the result has three, and each
    // planted pair stays together.
    let clusters = [0usize, 0, 1, 1, 2, 2, 3, 3, 4, 4];
    let mut toy = Toy::new(&clusters, 5);
    let measurements = measure(&mut toy, clusters.len(), 24, 0.2);
    let config = PlannerConfig {
        max_experts: 3,
        bootstrap: 50,
        ..PlannerConfig::default()
    };
    let record = plan(&measurements, &config, None).unwrap();
    assert_eq!(record.plan.num_experts, 3, "{}", record.plan.reasoning);
    for e in &record.plan.expert_definitions {
        for pair in [
            ["d0", "d1"],
            ["d2", "d3"],
            ["d4", "d5"],
            ["d6", "d7"],
            ["d8", "d9"],
        ] {
            let has: Vec<bool> = pair
                .iter()
                .map(|d| e.domains.contains(&d.to_string()))
                .collect();
            assert_eq!(has[0], has[1], "{:?}", e.domains);
        }
    }
}

struct Scripted(String);

impl self_eval::planner::PlanAdvisor for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn propose(&self, request: &serde_json::Value) -> Result<String, String> {
        assert!(request["measurements"]["cosine"].is_array());
        Ok(self.0.clone())
    }
}

#[test]
fn an_advisor_plan_is_used_only_when_valid() {
    let clusters = [0usize, 0, 1, 1, 2];
    let mut toy = Toy::new(&clusters, 7);
    let measurements = measure(&mut toy, clusters.len(), 16, 0.2);
    let config = PlannerConfig {
        bootstrap: 20,
        ..PlannerConfig::default()
    };
    let valid = r#"Sure: {"num_experts": 3, "expert_definitions": [
        {"id": 0, "name": "a", "domains": ["d0", "d1", "d2"], "rationale": "r", "target_improvement": 0.6},
        {"id": 1, "name": "b", "domains": ["d3"], "rationale": "r", "target_improvement": 0.6},
        {"id": 2, "name": "c", "domains": ["d4"], "rationale": "r", "target_improvement": 0.6}],
        "reasoning": "mine"}"#;
    let record = plan(&measurements, &config, Some(&Scripted(valid.into()))).unwrap();
    assert_eq!(record.source, "advisor");
    assert_eq!(record.plan.reasoning, "mine");
    assert!(record.advisor.as_ref().unwrap().accepted);
    assert_ne!(record.measured_plan, record.plan);

    // Two experts (below the minimum) that leave d4 uncovered: refused, with reasons.
    let invalid = r#"{"num_experts": 2, "expert_definitions": [
        {"id": 0, "name": "a", "domains": ["d0", "d1"], "rationale": "r", "target_improvement": 0.6},
        {"id": 1, "name": "b", "domains": ["d2", "d3", "d9"], "rationale": "r", "target_improvement": 0.6}],
        "reasoning": "mine"}"#;
    let record = plan(&measurements, &config, Some(&Scripted(invalid.into()))).unwrap();
    assert_eq!(record.source, "measured");
    assert_eq!(record.plan, record.measured_plan);
    let advisor = record.advisor.unwrap();
    assert!(!advisor.accepted);
    let problems = advisor.problems.join("; ");
    for expected in ["outside 3..=10", "`d9`", "`d4` is covered by no expert"] {
        assert!(problems.contains(expected), "{problems}");
    }
    let garbage = plan(
        &measurements,
        &config,
        Some(&Scripted("I think three.".into())),
    )
    .unwrap();
    assert_eq!(garbage.source, "measured");
    assert!(garbage.advisor.unwrap().problems[0].contains("no JSON"));
}
