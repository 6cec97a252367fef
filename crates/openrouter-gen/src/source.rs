//! Where problems come from: one trait, three implementations. The API generator
//! ([`crate::generate::ApiSource`]), `synth-tasks`' procedural generators
//! ([`ProceduralSource`], the offline default when no key is set) and a user's JSONL
//! file of curated problems ([`FileSource`], the seed's "human-curated datasets"
//! fallback). Every problem carries the name of the source that made it, and every
//! source passes what it makes through the same [`Screen`]: the domain's solver
//! recomputes the answer where one exists; prompts on the held-out side of a
//! `synth-tasks` domain's split (where every evaluation set is drawn) and exact or near
//! duplicates (within the dataset, or of any held-out prompt given) are dropped, each
//! rejection counted by reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use synth_tasks::dedup::DuplicateIndex;
use synth_tasks::{Domain, Problem, Rng, Split};

use crate::error::file_error;
use crate::report::{CostReport, Tally};
use crate::spec::GenerationSpec;
use crate::{Error, Result};

/// A problem and the source that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcedProblem {
    /// Domain name.
    pub domain: String,
    /// Difficulty it was asked at.
    pub difficulty: u32,
    /// The prompt, in the domain's format.
    pub prompt: String,
    /// The reference answer.
    pub answer: String,
    /// Who made it: `synth-tasks`, `api:<model>`, `file:<path>`.
    pub source: String,
}

impl SourcedProblem {
    /// As a `synth-tasks` problem, when the domain is one of its own.
    pub fn to_problem(&self) -> Option<Problem> {
        Some(Problem {
            domain: Domain::from_name(&self.domain)?,
            difficulty: self.difficulty,
            prompt: self.prompt.clone(),
            answer: self.answer.clone(),
        })
    }
}

/// A source of problems.
pub trait ProblemSource {
    /// Its name, as written beside each problem.
    fn name(&self) -> String;

    /// Up to `count` more problems for `spec`, screened. Fewer (or none) when the source
    /// runs dry or its budget is spent; [`ProblemSource::report`] says why.
    fn problems(&mut self, spec: &GenerationSpec, count: usize) -> Result<Vec<SourcedProblem>>;

    /// What it has done so far: requests, tokens, cost, rejections by reason.
    fn report(&self) -> CostReport;
}

/// What the domain's solver says of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerCheck {
    /// The solver recomputed the same answer.
    Verified,
    /// The prompt is not in the domain's format, or the answer is wrong.
    Rejected(String),
    /// No solver for this domain: agreement must decide.
    Unverifiable,
}

/// Checks `answer` to `prompt` with the domain's solver, when `synth-tasks` has one.
pub fn check_answer(domain: &str, prompt: &str, answer: &str) -> AnswerCheck {
    let Some(d) = Domain::from_name(domain) else {
        return AnswerCheck::Unverifiable;
    };
    match synth_tasks::solve(d, prompt) {
        None => AnswerCheck::Rejected(format!("prompt is not in the {domain} format")),
        Some(solved) => {
            let problem = Problem {
                domain: d,
                difficulty: 0,
                prompt: prompt.to_owned(),
                answer: solved.clone(),
            };
            if synth_tasks::verify(&problem, answer) {
                AnswerCheck::Verified
            } else {
                AnswerCheck::Rejected(format!("wrong answer: the solver gives `{solved}`"))
            }
        }
    }
}

/// The checks every source's problems pass: answer, duplicates. Tallies per expert.
#[derive(Debug, Clone)]
pub struct Screen {
    held_out: DuplicateIndex,
    kept: BTreeMap<String, DuplicateIndex>,
    near_duplicate: f64,
    /// Per expert: problems screened, accepted, rejections by reason.
    pub tallies: BTreeMap<String, Tally>,
}

impl Screen {
    /// A screen against `held_out` prompts; prompts whose 3-gram Jaccard similarity
    /// reaches `near_duplicate` count as duplicates.
    pub fn new(held_out: DuplicateIndex, near_duplicate: f64) -> Screen {
        Screen {
            held_out,
            kept: BTreeMap::new(),
            near_duplicate,
            tallies: BTreeMap::new(),
        }
    }

    /// Rejects a problem for a reason found elsewhere (schema, agreement).
    pub fn reject(&mut self, expert: &str, reason: &str) {
        let tally = self.tallies.entry(expert.to_owned()).or_default();
        tally.problems_received += 1;
        *tally.rejections.entry(reason_key(reason)).or_insert(0) += 1;
    }

    /// [`Screen::admit`] after checking the answer with the domain's solver.
    pub fn admit_checked(&mut self, expert: &str, problem: &SourcedProblem) -> bool {
        let check = check_answer(&problem.domain, &problem.prompt, &problem.answer);
        self.admit(expert, problem, &check).is_ok()
    }

    /// Whether `problem` passes for `expert`'s dataset given an answer check already
    /// made (`Err` holds the rejection reason); a passing problem joins the dataset's
    /// index.
    pub fn admit(
        &mut self,
        expert: &str,
        problem: &SourcedProblem,
        check: &AnswerCheck,
    ) -> std::result::Result<(), String> {
        let mut reason = match check {
            AnswerCheck::Rejected(reason) => Some(reason.clone()),
            AnswerCheck::Verified | AnswerCheck::Unverifiable => None,
        };
        if reason.is_none() && problem.prompt.trim().is_empty() {
            reason = Some("empty prompt".into());
        }
        // Every held-out evaluation set of a `synth-tasks` domain is drawn from the
        // held-out side of its split, a pure function of the prompt: a prompt on that
        // side could be in one, whatever seed drew it.
        if reason.is_none()
            && Domain::from_name(&problem.domain)
                .is_some_and(|d| synth_tasks::split_of(d, &problem.prompt) == Split::HeldOut)
        {
            reason = Some("on the held-out side of the domain's split".into());
        }
        if reason.is_none() {
            let (held_out, _) = self.held_out.check(&problem.prompt, self.near_duplicate);
            let kept = self.kept.entry(expert.to_owned()).or_default();
            let (within, _) = kept.check(&problem.prompt, self.near_duplicate);
            reason = held_out.or(within).map(|d| d.reason());
        }
        match reason {
            Some(reason) => {
                self.reject(expert, &reason);
                Err(reason)
            }
            None => {
                self.kept
                    .entry(expert.to_owned())
                    .or_default()
                    .keep(&problem.prompt);
                let tally = self.tallies.entry(expert.to_owned()).or_default();
                tally.problems_received += 1;
                tally.accepted += 1;
                Ok(())
            }
        }
    }
}

/// A rejection reason without its numbers (the text up to the first `:` or `(`).
pub fn reason_key(reason: &str) -> String {
    reason
        .split([':', '('])
        .next()
        .unwrap_or(reason)
        .trim()
        .to_owned()
}

/// The domains of a spec's topics that `synth-tasks` knows, with their difficulties.
fn known_topics(spec: &GenerationSpec) -> Result<Vec<(Domain, u32)>> {
    spec.check()?;
    spec.topics
        .iter()
        .map(|t| {
            Domain::from_name(&t.domain)
                .map(|d| (d, t.difficulty))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "spec of expert `{}`: domain `{}` has no procedural generator (known: {})",
                        spec.expert_name,
                        t.domain,
                        Domain::ALL.map(Domain::name).join(", ")
                    ))
                })
        })
        .collect()
}

/// `synth-tasks`' procedural generators: train-split problems at each topic's
/// difficulty, round-robin over the topics, seeded per expert.
#[derive(Debug)]
pub struct ProceduralSource {
    seed: u64,
    rngs: BTreeMap<usize, Rng>,
    screen: Screen,
}

impl ProceduralSource {
    /// The source, screening against `held_out`.
    pub fn new(seed: u64, held_out: DuplicateIndex, near_duplicate: f64) -> ProceduralSource {
        ProceduralSource {
            seed,
            rngs: BTreeMap::new(),
            screen: Screen::new(held_out, near_duplicate),
        }
    }
}

impl ProblemSource for ProceduralSource {
    fn name(&self) -> String {
        "synth-tasks".into()
    }

    fn problems(&mut self, spec: &GenerationSpec, count: usize) -> Result<Vec<SourcedProblem>> {
        let topics = known_topics(spec)?;
        let seed = self.seed;
        let rng = self
            .rngs
            .entry(spec.expert_id)
            .or_insert_with(|| Rng::new(seed ^ 0xda7a ^ spec.expert_id as u64));
        let mut out = Vec::with_capacity(count);
        // Small domains can run out of distinct prompts: stop after a bounded number of
        // draws rather than spin.
        let mut draws = 0usize;
        while out.len() < count && draws < count.saturating_mul(20).max(100) {
            let (domain, difficulty) = topics[draws % topics.len()];
            draws += 1;
            let p = synth_tasks::generate_in(domain, difficulty, Split::Train, rng);
            let problem = SourcedProblem {
                domain: domain.name().into(),
                difficulty,
                prompt: p.prompt,
                answer: p.answer,
                source: "synth-tasks".into(),
            };
            if self.screen.admit_checked(&spec.expert_name, &problem) {
                out.push(problem);
            }
        }
        Ok(out)
    }

    fn report(&self) -> CostReport {
        CostReport::offline(&self.name(), &self.screen.tallies)
    }
}

/// One line of a curated problems file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    prompt: String,
    answer: String,
    domain: String,
    #[serde(default)]
    difficulty: u32,
}

/// A user's JSONL file of curated problems: one `{"prompt", "answer", "domain",
/// "difficulty"?}` object per line. Each spec gets the file's problems of its domains,
/// in file order, screened like any other source's.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    lines: Vec<(usize, FileLine)>,
    cursor: BTreeMap<usize, usize>,
    screen: Screen,
}

impl FileSource {
    /// Reads the file; an unreadable line is an error naming the file and line.
    pub fn open(path: &Path, held_out: DuplicateIndex, near_duplicate: f64) -> Result<FileSource> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: FileLine = serde_json::from_str(line).map_err(|e| {
                file_error(
                    path,
                    format!(
                        "line {}: not a problem ({e}); expected {{\"prompt\", \"answer\", \"domain\", \"difficulty\"?}}",
                        i + 1
                    ),
                )
            })?;
            lines.push((i + 1, parsed));
        }
        if lines.is_empty() {
            return Err(file_error(path, "holds no problems"));
        }
        Ok(FileSource {
            path: path.to_owned(),
            lines,
            cursor: BTreeMap::new(),
            screen: Screen::new(held_out, near_duplicate),
        })
    }
}

impl ProblemSource for FileSource {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn problems(&mut self, spec: &GenerationSpec, count: usize) -> Result<Vec<SourcedProblem>> {
        spec.check()?;
        let name = self.name();
        let cursor = self.cursor.entry(spec.expert_id).or_insert(0);
        let mut out = Vec::new();
        while out.len() < count && *cursor < self.lines.len() {
            let (_, line) = &self.lines[*cursor];
            *cursor += 1;
            if !spec.topics.iter().any(|t| t.domain == line.domain) {
                continue;
            }
            let problem = SourcedProblem {
                domain: line.domain.clone(),
                difficulty: line.difficulty,
                prompt: line.prompt.clone(),
                answer: line.answer.clone(),
                source: name.clone(),
            };
            if self.screen.admit_checked(&spec.expert_name, &problem) {
                out.push(problem);
            }
        }
        Ok(out)
    }

    fn report(&self) -> CostReport {
        CostReport::offline(&self.name(), &self.screen.tallies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Topic;

    pub(crate) fn spec(domains: &[(&str, u32)], n: usize) -> GenerationSpec {
        GenerationSpec {
            expert_id: 0,
            expert_name: "e".into(),
            topics: domains
                .iter()
                .map(|(d, k)| Topic {
                    domain: (*d).into(),
                    description: String::new(),
                    difficulty: *k,
                })
                .collect(),
            num_examples: n,
            format: String::new(),
            special_requirements: vec![],
        }
    }

    #[test]
    fn answers_checked_by_the_solver() {
        assert_eq!(
            check_answer("arithmetic", "47+25=", "72"),
            AnswerCheck::Verified
        );
        assert!(matches!(
            check_answer("arithmetic", "47+25=", "73"),
            AnswerCheck::Rejected(r) if r.contains("`72`")
        ));
        assert!(matches!(
            check_answer("arithmetic", "what is 47+25?", "72"),
            AnswerCheck::Rejected(r) if r.contains("format")
        ));
        assert_eq!(
            check_answer("poetry", "rhyme", "x"),
            AnswerCheck::Unverifiable
        );
    }

    #[test]
    fn procedural_source_is_seeded_and_screened() {
        let held_out = DuplicateIndex::held_out(["1+1="]);
        let s = spec(&[("arithmetic", 1), ("code", 1)], 50);
        let mut a = ProceduralSource::new(3, held_out.clone(), 0.9);
        let mut b = ProceduralSource::new(3, held_out, 0.9);
        let first = a.problems(&s, 50).unwrap();
        assert_eq!(first, b.problems(&s, 50).unwrap());
        assert_eq!(first.len(), 50);
        assert!(
            first
                .iter()
                .all(|p| p.source == "synth-tasks" && p.prompt != "1+1=")
        );
        // Later draws never repeat earlier ones (dedup within the dataset).
        let second = a.problems(&s, 50).unwrap();
        assert!(
            second
                .iter()
                .all(|p| !first.iter().any(|q| q.prompt == p.prompt))
        );
        let report = a.report();
        assert_eq!(report.total.accepted, 100);
        assert_eq!(report.total.requests, 0);
        assert_eq!(report.total.usd, 0.0);
    }

    #[test]
    fn file_source_filters_checks_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curated.jsonl");
        // Train-side prompts (held-out-side ones are rejected for that alone).
        let mut rng = Rng::new(5);
        let train: Vec<Problem> = (0..3)
            .map(|_| synth_tasks::generate_in(Domain::Arithmetic, 2, Split::Train, &mut rng))
            .collect();
        let held_out_side =
            synth_tasks::generate_in(Domain::Arithmetic, 2, Split::HeldOut, &mut rng);
        let line = |prompt: &str, answer: &str, domain: &str| {
            format!(
                r#"{{"prompt":"{prompt}","answer":"{answer}","domain":"{domain}","difficulty":2}}"#
            )
        };
        let lines = [
            line(&train[0].prompt, &train[0].answer, "arithmetic"),
            line(&train[1].prompt, "-999999", "arithmetic"),
            line("rev(abc)=", "cba", "strings"),
            line(
                &train[0].prompt.replace('+', " + "),
                &train[0].answer,
                "arithmetic",
            ),
            line(&train[2].prompt, &train[2].answer, "arithmetic"),
            line(&held_out_side.prompt, &held_out_side.answer, "arithmetic"),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut source = FileSource::open(
            &path,
            DuplicateIndex::held_out([train[2].prompt.as_str()]),
            0.9,
        )
        .unwrap();
        let got = source
            .problems(&spec(&[("arithmetic", 2)], 10), 10)
            .unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].source.starts_with("file:"));
        let report = source.report();
        let rejections = &report.total.rejections;
        assert_eq!(rejections.get("wrong answer"), Some(&1), "{rejections:?}");
        assert_eq!(
            rejections.get("exact duplicate within the dataset"),
            Some(&1)
        );
        assert_eq!(rejections.get("duplicate of a held-out problem"), Some(&1));
        assert_eq!(
            rejections.get("on the held-out side of the domain's split"),
            Some(&1)
        );
        std::fs::write(
            &path,
            "{\"prompt\":\"1+1=\",\"answer\":\"2\",\"domain\":\"arithmetic\",\"level\":1}\n",
        )
        .unwrap();
        let error = FileSource::open(&path, DuplicateIndex::default(), 0.9)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("curated.jsonl") && error.contains("line 1") && error.contains("level"),
            "{error}"
        );
    }
}
