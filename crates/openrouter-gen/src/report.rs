//! The cost report: per expert and per model, requests, cache hits, retries, tokens,
//! USD, problems received and accepted, rejections by reason; JSON and Markdown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counts of one expert, one model, or everything.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Requests sent (cache hits excluded).
    pub requests: u64,
    /// Requests answered from the cache (no cost).
    pub cache_hits: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Requests that failed for good.
    pub failed_requests: u64,
    /// Prompt tokens the server counted.
    pub prompt_tokens: u64,
    /// Completion tokens the server counted.
    pub completion_tokens: u64,
    /// USD charged.
    pub usd: f64,
    /// Problems received (before checks).
    pub problems_received: u64,
    /// Problems accepted.
    pub accepted: u64,
    /// Rejections by reason (the reason's text before its numbers).
    pub rejections: BTreeMap<String, u64>,
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.cache_hits += other.cache_hits;
        self.retries += other.retries;
        self.failed_requests += other.failed_requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.usd += other.usd;
        self.problems_received += other.problems_received;
        self.accepted += other.accepted;
        for (reason, n) in &other.rejections {
            *self.rejections.entry(reason.clone()).or_insert(0) += n;
        }
    }
}

/// A source's report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CostReport {
    /// The source (`synth-tasks`, `api:<model>`, `file:<path>`).
    pub source: String,
    /// Per expert.
    pub per_expert: BTreeMap<String, Tally>,
    /// Per model that served (or the source's name for offline sources).
    pub per_model: BTreeMap<String, Tally>,
    /// Everything.
    pub total: Tally,
    /// The run's USD cap, if any.
    pub cap_usd: Option<f64>,
    /// The largest amount ever reserved at once.
    pub peak_reserved_usd: f64,
    /// Why generation stopped short, if it did (budget spent, a refusal).
    pub stopped: Option<String>,
}

impl CostReport {
    /// A report from cells keyed by (expert, model).
    pub fn from_cells(source: &str, cells: &BTreeMap<(String, String), Tally>) -> CostReport {
        let mut report = CostReport {
            source: source.to_owned(),
            ..CostReport::default()
        };
        for ((expert, model), tally) in cells {
            report
                .per_expert
                .entry(expert.clone())
                .or_default()
                .add(tally);
            report
                .per_model
                .entry(model.clone())
                .or_default()
                .add(tally);
            report.total.add(tally);
        }
        report
    }

    /// The report of a source that makes no requests.
    pub fn offline(source: &str, per_expert: &BTreeMap<String, Tally>) -> CostReport {
        let cells = per_expert
            .iter()
            .map(|(expert, t)| ((expert.clone(), source.to_owned()), t.clone()))
            .collect();
        CostReport::from_cells(source, &cells)
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("# Problem generation: {}\n\n", self.source);
        let t = &self.total;
        out.push_str(&format!(
            "{} problems accepted of {} received; {} requests sent, {} answered from the cache, {} retried attempts, {} failed; {} prompt and {} completion tokens; **${:.4}**{}.\n\n",
            t.accepted,
            t.problems_received,
            t.requests,
            t.cache_hits,
            t.retries,
            t.failed_requests,
            t.prompt_tokens,
            t.completion_tokens,
            t.usd,
            match self.cap_usd {
                Some(cap) if cap.is_finite() => format!(
                    " of a ${cap:.2} cap (at most ${:.4} reserved at once)",
                    self.peak_reserved_usd
                ),
                _ => String::new(),
            }
        ));
        if let Some(stopped) = &self.stopped {
            out.push_str(&format!("Stopped early: {stopped}\n\n"));
        }
        for (title, rows) in [("Expert", &self.per_expert), ("Model", &self.per_model)] {
            out.push_str(&format!(
                "| {title} | requests | cache hits | retries | failed | prompt tokens | completion tokens | USD | received | accepted | rejected (top reasons) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
            ));
            for (name, t) in rows {
                let mut reasons: Vec<(&String, &u64)> = t.rejections.iter().collect();
                reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let reasons: Vec<String> = reasons
                    .iter()
                    .take(4)
                    .map(|(r, n)| format!("{r}: {n}"))
                    .collect();
                out.push_str(&format!(
                    "| {name} | {} | {} | {} | {} | {} | {} | {:.4} | {} | {} | {} |\n",
                    t.requests,
                    t.cache_hits,
                    t.retries,
                    t.failed_requests,
                    t.prompt_tokens,
                    t.completion_tokens,
                    t.usd,
                    t.problems_received,
                    t.accepted,
                    if reasons.is_empty() {
                        "none".to_owned()
                    } else {
                        reasons.join(", ")
                    }
                ));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_sum_per_expert_per_model_and_total() {
        let mut cells = BTreeMap::new();
        let tally = |requests, usd, reason: &str| Tally {
            requests,
            usd,
            rejections: [(reason.to_owned(), 1)].into(),
            ..Tally::default()
        };
        cells.insert(("a".into(), "m1".into()), tally(2, 0.5, "wrong answer"));
        cells.insert(("a".into(), "m2".into()), tally(1, 0.25, "wrong answer"));
        cells.insert(("b".into(), "m1".into()), tally(4, 1.0, "schema"));
        let report = CostReport::from_cells("api:m1", &cells);
        assert_eq!(report.per_expert["a"].requests, 3);
        assert_eq!(report.per_model["m1"].requests, 6);
        assert_eq!(report.total.usd, 1.75);
        assert_eq!(report.total.rejections["wrong answer"], 2);
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| a | 3 |") && markdown.contains("| m1 | 6 |"),
            "{markdown}"
        );
    }
}
