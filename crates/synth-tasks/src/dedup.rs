//! Exact and near-duplicate prompts: a dataset must not repeat itself nor copy (or
//! nearly copy) any held-out evaluation prompt, whatever made it (a generator, an API,
//! a user's file).
//!
//! Prompts are compared after normalisation (whitespace removed, lower-case). Near
//! duplicates are measured by the Jaccard similarity of character 3-gram sets: exact
//! rather than estimated (no MinHash), because the prompts are short and the sets
//! small, so the scan over a few thousand prompts costs microseconds per check.
//!
//! ```
//! use synth_tasks::dedup::{DuplicateIndex, Origin};
//!
//! let mut index = DuplicateIndex::held_out(["47+25="]);
//! let (found, _) = index.check("47 + 25=", 0.9);
//! assert_eq!(found.unwrap().origin, Origin::HeldOut);
//! index.keep("12*3=");
//! assert!(index.check("12*3=", 0.9).0.unwrap().exact);
//! assert!(index.check("98-7=", 0.9).0.is_none());
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where a matching prompt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A held-out evaluation prompt.
    HeldOut,
    /// A prompt the dataset already keeps.
    Kept,
}

/// A prompt found to duplicate another.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    /// What it duplicates.
    pub origin: Origin,
    /// Equal after normalisation (else near: similarity at or above the threshold).
    pub exact: bool,
    /// 3-gram Jaccard similarity (1 for exact duplicates).
    pub similarity: f64,
}

impl Duplicate {
    /// A one-line reason, e.g. `near duplicate of a held-out problem (3-gram Jaccard 0.92)`.
    pub fn reason(&self) -> String {
        match (self.exact, self.origin) {
            (true, Origin::HeldOut) => "duplicate of a held-out problem".into(),
            (true, Origin::Kept) => "exact duplicate within the dataset".into(),
            (false, origin) => format!(
                "near duplicate of {} (3-gram Jaccard {:.2})",
                match origin {
                    Origin::HeldOut => "a held-out problem",
                    Origin::Kept => "a kept problem",
                },
                self.similarity
            ),
        }
    }
}

/// The prompts a dataset must stay away from (held-out sets) and those it already
/// holds.
#[derive(Debug, Default, Clone)]
pub struct DuplicateIndex {
    exact: HashMap<String, Origin>,
    shingles: Vec<(Vec<u64>, Origin)>,
}

impl DuplicateIndex {
    /// An index of held-out prompts.
    pub fn held_out<'a>(prompts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut index = Self::default();
        for prompt in prompts {
            index.insert(prompt, Origin::HeldOut);
        }
        index
    }

    /// Adds a held-out prompt.
    pub fn add_held_out(&mut self, prompt: &str) {
        self.insert(prompt, Origin::HeldOut);
    }

    /// Records `prompt` as kept in the dataset.
    pub fn keep(&mut self, prompt: &str) {
        self.insert(prompt, Origin::Kept);
    }

    fn insert(&mut self, prompt: &str, origin: Origin) {
        let key = normalise(prompt);
        // A held-out prompt stays held out even if it is also kept.
        let entry = self.exact.entry(key).or_insert(origin);
        if origin == Origin::HeldOut {
            *entry = Origin::HeldOut;
        }
        self.shingles.push((shingles(prompt), origin));
    }

    /// Prompts indexed (held out and kept).
    pub fn len(&self) -> usize {
        self.shingles.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.shingles.is_empty()
    }

    /// The duplicate `prompt` is, if any (exact first, else the most similar prompt at or
    /// above `threshold`), and the highest similarity to any indexed prompt.
    pub fn check(&self, prompt: &str, threshold: f64) -> (Option<Duplicate>, f64) {
        if let Some(&origin) = self.exact.get(&normalise(prompt)) {
            let duplicate = Duplicate {
                origin,
                exact: true,
                similarity: 1.0,
            };
            return (Some(duplicate), 1.0);
        }
        let own = shingles(prompt);
        let mut best: (f64, Origin) = (0.0, Origin::Kept);
        for (other, origin) in &self.shingles {
            let similarity = jaccard(&own, other);
            // Ties go to held-out prompts: the graver finding.
            if similarity > best.0 || (similarity == best.0 && *origin == Origin::HeldOut) {
                best = (similarity, *origin);
            }
        }
        let duplicate = (best.0 >= threshold).then_some(Duplicate {
            origin: best.1,
            exact: false,
            similarity: best.0,
        });
        (duplicate, best.0)
    }
}

/// The form prompts are compared in: no whitespace, lower-case.
pub fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Character 3-gram shingles of a normalised prompt, sorted and deduplicated (a prompt
/// shorter than three characters is one shingle).
pub fn shingles(text: &str) -> Vec<u64> {
    let chars: Vec<u32> = normalise(text).chars().map(u32::from).collect();
    let mut out: Vec<u64> = if chars.len() < 3 {
        vec![chars.iter().fold(0u64, |h, &c| h << 21 | u64::from(c))]
    } else {
        chars
            .windows(3)
            .map(|w| u64::from(w[0]) << 42 | u64::from(w[1]) << 21 | u64::from(w[2]))
            .collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Jaccard similarity of two sorted, deduplicated sets (1 when both are empty).
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - common;
    if union == 0 {
        1.0
    } else {
        common as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_exact_and_near() {
        let mut index = DuplicateIndex::held_out(["sort(12,45,67,89,23,56,78,90,11)=", "1+2="]);
        let (found, _) = index.check("1 + 2=", 0.9);
        assert_eq!(
            found.unwrap().reason(),
            "duplicate of a held-out problem".to_owned()
        );
        // One changed digit in a long prompt: 3-gram Jaccard 0.82.
        let (found, similarity) = index.check("sort(12,45,67,89,23,56,78,90,19)=", 0.8);
        let found = found.unwrap();
        assert!(
            found.reason().contains("near duplicate of a held-out"),
            "{similarity}"
        );
        assert!(!found.exact);
        assert!(
            index
                .check("sort(12,45,67,89,23,56,78,90,19)=", 0.9)
                .0
                .is_none()
        );
        assert!(index.check("47+25=", 0.9).0.is_none());
        index.keep("47+25=");
        assert_eq!(
            index.check("47+25=", 0.9).0.unwrap().reason(),
            "exact duplicate within the dataset"
        );
        assert_eq!(index.len(), 3);
        assert!((jaccard(&shingles("abcd"), &shingles("abce")) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn held_out_wins_over_kept() {
        let mut index = DuplicateIndex::default();
        index.keep("rev(abc)=");
        index.add_held_out("rev(abc)=");
        assert_eq!(
            index.check("REV(abc)=", 0.9).0.unwrap().origin,
            Origin::HeldOut
        );
    }

    #[test]
    fn non_ascii_prompts_are_compared_by_character() {
        // Multi-byte characters must not split into byte shingles that collide.
        let a = shingles("größer(ä,ö)=");
        let b = shingles("größer(ä,ü)=");
        let s = jaccard(&a, &b);
        assert!(s > 0.5 && s < 1.0, "{s}");
        assert_eq!(jaccard(&[], &[]), 1.0);
    }
}
