//! One teacher-forced pass decides greedy correctness exactly as generation does, on
//! every domain of the test model.

use std::path::Path;

use self_eval::Answerer;
use self_eval::profile::distinct_problems;
use synth_tasks::{Domain, Split};

#[test]
fn one_pass_agrees_with_generation_on_every_problem() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test-model");
    let model = lm::CausalLm::load(&dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let tokenizer = lm::Tokenizer::from_dir(&dir).unwrap();
    let mut answerer = Answerer::new(&model, &tokenizer, Default::default()).unwrap();
    answerer.batch = 48;
    let (mut total, mut correct, mut verified) = (0, 0, 0);
    for domain in Domain::ALL {
        for difficulty in [1, 2] {
            let problems = distinct_problems(domain, difficulty, Split::HeldOut, 60, 9);
            let encoded = answerer.encode(&problems).unwrap();
            let one_pass = answerer.one_pass(&encoded).unwrap();
            let (generated, texts) = answerer.generate_exact(&encoded).unwrap();
            for ((p, a), (g, text)) in problems
                .iter()
                .zip(&one_pass)
                .zip(generated.iter().zip(&texts))
            {
                assert_eq!(
                    a.exact,
                    *g,
                    "{} `{}` -> `{text}` (reference `{}`)",
                    domain.name(),
                    p.prompt,
                    p.answer
                );
                assert!(a.log_prob <= 0.0 && a.log_prob.is_finite());
                if a.exact {
                    assert!(synth_tasks::verify(p, text));
                }
                total += 1;
                correct += usize::from(a.exact);
                verified += usize::from(synth_tasks::verify(p, text));
            }
        }
    }
    // The test model answers some and misses some: the comparison is not vacuous.
    assert!(
        correct > total / 20 && correct < total,
        "{correct} of {total}"
    );
    // Greedy-exact is the stricter criterion; on this model it equals the verifier's.
    assert_eq!(
        correct, verified,
        "{correct} exact vs {verified} verified of {total}"
    );
}
