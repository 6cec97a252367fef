//! Procedural capability domains with exact verifiers, and behaviour suites.
//!
//! * Eight **domains** ([`Domain`]): each generates a [`Problem`] at a difficulty from a
//!   seeded generator, and [`verify`] checks an output exactly (after the documented
//!   normalisation). Prompts are short and character-friendly (`47+25=`), for small
//!   models.
//! * Three **behaviour suites** ([`Suite`]) of preference pairs `(prompt, preferred,
//!   rejected)`: alignment (refusing a fixed vocabulary of harmful requests, answering
//!   `unknown` to unanswerable questions), tool use (`CALL calc(<expr>)` for numbers too
//!   large to work in the head) and persona (consistent identity answers).
//! * **Splits** are a function of the prompt's hash ([`split_of`]), so train and held-out
//!   sets can never share a problem, whatever the seeds.
//!
//! ```
//! use synth_tasks::{Domain, Rng, Split, generate_in, verify};
//!
//! let mut rng = Rng::new(7);
//! let problem = generate_in(Domain::Arithmetic, 2, Split::HeldOut, &mut rng);
//! assert!(verify(&problem, &problem.answer));
//! assert!(verify(&problem, &format!(" {}\nmore text", problem.answer)));
//! assert!(!verify(&problem, "no"));
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod dedup;
mod domains;
mod solve;
mod suites;

pub use domains::generate;
pub use solve::solve;
pub use suites::{PERSONA_NAME, Pair, REFUSAL, Suite, UNKNOWN, pairs};

use serde::{Deserialize, Serialize};

/// A capability domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// `a+b`, `a-b`, `a*b`; difficulty = digits of the operands.
    Arithmetic,
    /// Several operations with precedence (`3+4*2-5=`); difficulty = operations - 1.
    MultiStep,
    /// `T&F|!T=` with `&`, `|`, `!` and parentheses; difficulty = operators.
    Boolean,
    /// `max(47,52)=` (difficulty 1) or `sort(5,2,9)=` with difficulty + 1 numbers.
    Comparison,
    /// `rev(abc)=`, `up(abc)=`; difficulty = word length - 2.
    Strings,
    /// `count(a,banana)=`; difficulty scales the text length.
    Counting,
    /// Tiny programs: `x=3;x*=2;x+=1;x?`; difficulty = statements - 1.
    Code,
    /// Continue an arithmetic or geometric sequence: `52,59,66,73,?`; difficulty widens
    /// the steps, adds decreasing sequences (3+) and geometric ones (2+).
    Sequence,
}

impl Domain {
    /// Every domain.
    pub const ALL: [Domain; 8] = [
        Domain::Arithmetic,
        Domain::MultiStep,
        Domain::Boolean,
        Domain::Comparison,
        Domain::Strings,
        Domain::Counting,
        Domain::Code,
        Domain::Sequence,
    ];

    /// The snake-case name (`multi_step`).
    pub fn name(self) -> &'static str {
        match self {
            Domain::Arithmetic => "arithmetic",
            Domain::MultiStep => "multi_step",
            Domain::Boolean => "boolean",
            Domain::Comparison => "comparison",
            Domain::Strings => "strings",
            Domain::Counting => "counting",
            Domain::Code => "code",
            Domain::Sequence => "sequence",
        }
    }

    /// The domain of a snake-case name, if any.
    pub fn from_name(name: &str) -> Option<Domain> {
        Domain::ALL.into_iter().find(|d| d.name() == name)
    }

    /// What the domain asks, in a sentence (for dataset specs and generation prompts).
    pub fn description(self) -> &'static str {
        match self {
            Domain::Arithmetic => "one addition, subtraction or multiplication of integers",
            Domain::MultiStep => {
                "a chain of single-digit additions, subtractions and multiplications with \
                 the usual precedence"
            }
            Domain::Boolean => "a boolean expression over T and F with &, |, ! and parentheses",
            Domain::Comparison => "the maximum or minimum of two numbers, or a sorted list",
            Domain::Strings => "a word reversed (rev) or its letters sorted (sortc)",
            Domain::Counting => "how often a letter occurs in a string over a, b, c, d",
            Domain::Code => "the final value of x after a short program of x+=, x-=, x*=",
            Domain::Sequence => "the next term of an arithmetic or geometric sequence",
        }
    }

    /// The exact prompt and answer format, with an example.
    pub fn format(self) -> &'static str {
        match self {
            Domain::Arithmetic => "prompt `47+25=`, answer `72`",
            Domain::MultiStep => "prompt `3+4*2-5=`, answer `6`",
            Domain::Boolean => "prompt `T&(F|!T)=`, answer `F` (T or F)",
            Domain::Comparison => "prompt `max(47,52)=` or `sort(5,2,9)=`, answer `52` or `2,5,9`",
            Domain::Strings => "prompt `rev(abc)=` or `sortc(cab)=`, answer `cba` or `abc`",
            Domain::Counting => "prompt `count(a,banana)=`, answer `3`",
            Domain::Code => "prompt `x=3;x*=2;x+=1;x?`, answer `7`",
            Domain::Sequence => "prompt `52,59,66,73,?`, answer `80`",
        }
    }
}

/// A generated problem.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Problem {
    /// Its domain.
    pub domain: Domain,
    /// The difficulty it was generated at.
    pub difficulty: u32,
    /// The prompt, e.g. `47+25=`.
    pub prompt: String,
    /// The reference answer, e.g. `72`.
    pub answer: String,
}

/// A seeded generator (SplitMix64): small, fast, and its stream is fixed by this crate,
/// so a seed gives the same data on every platform and release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `[low, high]`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        debug_assert!(low <= high);
        let span = (high - low) as u64 + 1;
        low + (self.next_u64() % span) as i64
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as i64 - 1) as usize]
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Which side of the train/held-out split a prompt is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// About 90% of prompts.
    Train,
    /// About 10% of prompts.
    HeldOut,
}

/// The split of a prompt: FNV-1a of the domain name and the prompt, mixed by the
/// SplitMix64 finalizer, held out when that is 0 modulo 10. A pure function of the
/// text, so splits cannot overlap.
pub fn split_of(domain: Domain, prompt: &str) -> Split {
    split_by_hash(domain.name(), prompt)
}

pub(crate) fn split_by_hash(kind: &str, prompt: &str) -> Split {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in kind.bytes().chain([0]).chain(prompt.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits are weak: its parity is the parity of the sum of the bytes'
    // parities, so without mixing the held-out side of a small alphabet (`T&F|!T=`)
    // would be structurally different from the train side.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    hash ^= hash >> 31;
    if hash.is_multiple_of(10) {
        Split::HeldOut
    } else {
        Split::Train
    }
}

/// A problem of `domain` at `difficulty` from the given split (drawing until one falls
/// on that side).
pub fn generate_in(domain: Domain, difficulty: u32, split: Split, rng: &mut Rng) -> Problem {
    loop {
        let problem = generate(domain, difficulty, rng);
        if split_of(domain, &problem.prompt) == split {
            return problem;
        }
    }
}

/// The normalised form of an output: the first line, trimmed, without a trailing
/// period, lower-case, with spaces after commas removed; `true`/`false` read as `t`/`f`;
/// integers without a leading `+` or leading zeros.
pub fn normalise(output: &str) -> String {
    let line = output.trim_start().lines().next().unwrap_or("").trim();
    let line = line
        .trim_end_matches('.')
        .trim()
        .to_lowercase()
        .replace(", ", ",");
    match line.as_str() {
        "true" => return "t".to_owned(),
        "false" => return "f".to_owned(),
        _ => {}
    }
    let unsigned = line.strip_prefix('+').unwrap_or(&line);
    match unsigned.parse::<i64>() {
        Ok(number) if !unsigned.is_empty() => number.to_string(),
        _ => line,
    }
}

/// Whether `output` answers `problem`: equal to the reference after [`normalise`].
pub fn verify(problem: &Problem, output: &str) -> bool {
    normalise(output) == normalise(&problem.answer)
}

/// How an answer is read out of a model's output before it is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extraction {
    /// The first line: what a base model completing `47+25=` writes (the default).
    #[default]
    FirstLine,
    /// Free-form text from an instruct model, tried in this order:
    /// 1. the last `\boxed{...}` (nested braces allowed);
    /// 2. what follows the last `answer:` or `answer is` (any case) on its line;
    /// 3. when the reference is an integer, the last number in the text (`1,234` reads
    ///    as 1234), so "47 + 25 = 72." answers `47+25=`;
    /// 4. otherwise the first line.
    FreeForm,
}

/// The part of `output` that [`verify_with`] compares with `reference`.
pub fn extract(output: &str, extraction: Extraction, reference: &str) -> String {
    if extraction == Extraction::FirstLine {
        return output.to_owned();
    }
    if let Some(boxed) = last_boxed(output) {
        return boxed;
    }
    // ASCII lower-casing keeps every byte offset, so positions carry over to `output`.
    let lower = output.to_ascii_lowercase();
    let marker = ["answer:", "answer is"]
        .iter()
        .filter_map(|m| lower.rfind(m).map(|at| at + m.len()))
        .max();
    if let Some(at) = marker {
        let rest = output[at..].trim_start_matches([' ', ':', '*']);
        // Markdown emphasis and a closing period are not part of the answer.
        let line = rest
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches(['*', ' '])
            .trim_end_matches(['*', '.', ' ']);
        if !line.is_empty() {
            return line.to_owned();
        }
    }
    if normalise(reference).parse::<i64>().is_ok()
        && let Some(number) = last_integer(output)
    {
        return number;
    }
    output.to_owned()
}

/// Whether `output` answers `problem` once its answer is extracted as `extraction` says.
pub fn verify_with(problem: &Problem, output: &str, extraction: Extraction) -> bool {
    verify(problem, &extract(output, extraction, &problem.answer))
}

fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// The last integer in `text` (a leading minus kept, thousands commas dropped; a
/// decimal like `3.5` is not an integer and is skipped).
fn last_integer(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let digit_at = |at: usize| chars.get(at).is_some_and(char::is_ascii_digit);
    // `,` followed by exactly three digits.
    let thousands_separator =
        |at: usize| chars[at] == ',' && (1..=3).all(|k| digit_at(at + k)) && !digit_at(at + 4);
    let mut found = None;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let negative =
            i > 0 && chars[i - 1] == '-' && (i < 2 || !chars[i - 2].is_ascii_alphanumeric());
        let mut digits = String::new();
        while i < chars.len() {
            if chars[i].is_ascii_digit() {
                digits.push(chars[i]);
            } else if !thousands_separator(i) {
                break;
            }
            i += 1;
        }
        let decimal = i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit();
        if decimal {
            while i < chars.len() && (chars[i] == '.' || chars[i].is_ascii_digit()) {
                i += 1;
            }
            continue;
        }
        found = Some(if negative {
            format!("-{digits}")
        } else {
            digits
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(prompt: &str, answer: &str) -> Problem {
        let mut rng = Rng::new(1);
        let mut problem = generate(Domain::Arithmetic, 1, &mut rng);
        problem.prompt = prompt.to_owned();
        problem.answer = answer.to_owned();
        problem
    }

    /// Greedy completions of SmolLM2-135M-Instruct (Q4_1 GGUF, chat template, lm on CPU)
    /// to the questions shown, recorded 2026-12-04, and what free-form extraction reads.
    const REAL_COMPLETIONS: &[(&str, &str, &str)] = &[
        ("What is 47+25?", "47 + 25 = 72.", "72"),
        (
            "What is 128+256? Answer with a number.",
            "128 + 256 = 392",
            "392",
        ),
        (
            "Is it true that 3 is greater than 5? Answer true or false.",
            "False.",
            "False.",
        ),
        (
            "What is 9*8?",
            "To calculate 9*8, you multiply 9 by itself, which gives you 8*8 = 64. This is a \
             fundamental operation in mathematics, and it's used in many areas, including \
             algebra, calculus, and",
            "64",
        ),
        (
            "Compute 15-7.",
            "To find 15-7, we need to find the difference between 15 and 7, which is 10. This \
             is a fundamental operation in mathematics, and it's often used to calculate \
             proportions or ratios.\n",
            "10",
        ),
    ];

    #[test]
    fn free_form_extraction_reads_real_instruct_completions() {
        for (question, completion, extracted) in REAL_COMPLETIONS {
            let reference = if *extracted == "False." { "f" } else { "0" };
            assert_eq!(
                extract(completion, Extraction::FreeForm, reference),
                *extracted,
                "{question}"
            );
        }
        // The model's right answer scores; first-line reading would miss it.
        let sum = problem("47+25=", "72");
        assert!(verify_with(&sum, "47 + 25 = 72.", Extraction::FreeForm));
        assert!(!verify_with(&sum, "47 + 25 = 72.", Extraction::FirstLine));
        assert!(!verify_with(
            &problem("128+256=", "384"),
            "128 + 256 = 392",
            Extraction::FreeForm
        ));
        assert!(verify_with(
            &problem("T&F=", "f"),
            "False.",
            Extraction::FreeForm
        ));
    }

    #[test]
    fn boxed_and_answer_markers_take_precedence() {
        let p = problem("x", "42");
        assert!(verify_with(
            &p,
            "We get 7 then \\boxed{42}. Check: 6*7=42? yes 1",
            Extraction::FreeForm
        ));
        assert_eq!(
            extract("\\boxed{\\frac{1}{2}} done", Extraction::FreeForm, "x"),
            "\\frac{1}{2}"
        );
        assert_eq!(
            extract(
                "3 steps. The answer is: **-12**.\nBye 5",
                Extraction::FreeForm,
                "0"
            ),
            "-12"
        );
        assert!(verify_with(
            &problem("x", "-12"),
            "3 steps. Answer: -12.\nBye 5",
            Extraction::FreeForm
        ));
        assert!(verify_with(
            &problem("sort", "2,5,9"),
            "answer: 2, 5, 9",
            Extraction::FreeForm
        ));
        // Numbers: thousands commas, negatives, decimals skipped.
        assert_eq!(extract("so 1,234 items", Extraction::FreeForm, "1"), "1234");
        assert_eq!(extract("x = -7", Extraction::FreeForm, "1"), "-7");
        assert_eq!(extract("2 apples cost 3.5", Extraction::FreeForm, "1"), "2");
        assert_eq!(
            extract("no numbers", Extraction::FreeForm, "1"),
            "no numbers"
        );
        // Non-integer references fall back to the first line.
        assert_eq!(extract("abc\n12", Extraction::FreeForm, "cba"), "abc\n12");
    }
}
