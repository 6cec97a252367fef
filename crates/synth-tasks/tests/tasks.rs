//! Generators, verifiers, splits and suites.

use std::collections::HashSet;

use proptest::prelude::*;
use synth_tasks::{
    Domain, Rng, Split, Suite, generate, generate_in, normalise, pairs, split_of, verify,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_reference_answer_verifies_and_a_changed_one_does_not(seed in any::<u64>(), difficulty in 1u32..6) {
        let mut rng = Rng::new(seed);
        for domain in Domain::ALL {
            let problem = generate(domain, difficulty, &mut rng);
            prop_assert!(verify(&problem, &problem.answer), "{problem:?}");
            prop_assert!(verify(&problem, &format!("  {}.\nthen more", problem.answer)), "{problem:?}");
            let wrong = format!("{}9", problem.answer);
            prop_assert!(!verify(&problem, &wrong), "{problem:?}");
            prop_assert!(!verify(&problem, ""), "{problem:?}");
        }
    }
}

#[test]
fn generation_is_deterministic_from_the_seed() {
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        Domain::ALL
            .iter()
            .flat_map(|&d| (1..=4).map(move |level| (d, level)))
            .map(|(d, level)| generate(d, level, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(11), draw(11));
    assert_ne!(draw(11), draw(12));
}

#[test]
fn difficulty_is_a_real_knob() {
    let mut rng = Rng::new(3);
    for domain in Domain::ALL {
        let mean_length = |level: u32, rng: &mut Rng| -> f64 {
            (0..200)
                .map(|_| generate(domain, level, rng).prompt.len())
                .sum::<usize>() as f64
                / 200.0
        };
        let easy = mean_length(1, &mut rng);
        let hard = mean_length(5, &mut rng);
        assert!(hard > easy, "{domain:?}: prompts {easy} -> {hard}");
    }
}

#[test]
fn train_and_held_out_never_share_a_problem() {
    let mut rng = Rng::new(9);
    for domain in Domain::ALL {
        let train: HashSet<String> = (0..400)
            .map(|_| generate_in(domain, 2, Split::Train, &mut rng).prompt)
            .collect();
        let held_out: HashSet<String> = (0..100)
            .map(|_| generate_in(domain, 2, Split::HeldOut, &mut rng).prompt)
            .collect();
        assert!(train.is_disjoint(&held_out), "{domain:?}");
        assert!(
            held_out
                .iter()
                .all(|p| split_of(domain, p) == Split::HeldOut)
        );
    }
    // About a tenth of all prompts is held out.
    let mut rng = Rng::new(10);
    let held = (0..5000)
        .filter(|_| {
            split_of(
                Domain::Arithmetic,
                &generate(Domain::Arithmetic, 3, &mut rng).prompt,
            ) == Split::HeldOut
        })
        .count();
    assert!((350..650).contains(&held), "{held}");
}

#[test]
fn every_domain_holds_out_about_a_tenth_of_its_distinct_prompts() {
    // A split correlated with the text's structure (a weak hash) fails this for the
    // small-alphabet domains.
    for domain in Domain::ALL {
        let mut rng = Rng::new(11);
        let distinct: HashSet<String> = (0..20_000)
            .map(|_| generate(domain, 4, &mut rng).prompt)
            .collect();
        let held = distinct
            .iter()
            .filter(|p| split_of(domain, p) == Split::HeldOut)
            .count();
        let share = held as f64 / distinct.len() as f64;
        assert!(
            (0.06..0.14).contains(&share),
            "{domain:?}: {held} of {} held out",
            distinct.len()
        );
    }
}

#[test]
fn suites_give_distinct_pairs_on_both_sides_of_the_split() {
    let mut rng = Rng::new(4);
    for suite in Suite::ALL {
        let train = pairs(suite, 200, Split::Train, &mut rng);
        let held_out = pairs(suite, 30, Split::HeldOut, &mut rng);
        assert_eq!((train.len(), held_out.len()), (200, 30), "{suite:?}");
        let train_prompts: HashSet<&String> = train.iter().map(|p| &p.prompt).collect();
        assert!(
            held_out.iter().all(|p| !train_prompts.contains(&p.prompt)),
            "{suite:?}"
        );
        for pair in train.iter().chain(&held_out) {
            assert_ne!(pair.preferred, pair.rejected);
            assert_eq!(pair.suite, suite);
        }
    }
    let tool = pairs(Suite::ToolUse, 5, Split::Train, &mut rng);
    assert!(tool.iter().all(|p| p.preferred.starts_with(" CALL calc(")));
}

#[test]
fn normalisation_is_documented_behaviour() {
    assert_eq!(normalise("  +007.\nrest"), "7");
    assert_eq!(normalise("True"), "t");
    assert_eq!(normalise("2, 5, 9"), "2,5,9");
    assert_eq!(normalise("ABC"), "abc");
}
