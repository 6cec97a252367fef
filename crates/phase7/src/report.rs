//! The run report, read back from the run's files: `report.md` (plots as SVG files in
//! `report/`) and a self-contained `report.html` (the same plots inline, no scripts, no
//! network): stages with time and cost, the Phase 6 check, dequantization, the profile,
//! the plan and the measurements behind it, the validated datasets, capability before
//! and after per domain, each expert's training curves, the search with its guidance
//! decisions and their measured effect, the self-test and dispatch.

use std::fmt::Write as _;
use std::path::Path;

use self_eval::dispatch::DispatchReport;
use self_eval::search::SearchOutcome;
use self_eval::selftest::SelfTest;
use self_eval::{DatasetReport, PlanRecord, Profile};

use crate::run::{RunDir, io_error};
use crate::{Result, charts, stage_names, stages};

/// One block of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A heading of level 1-3.
    Heading(u8, String),
    /// A paragraph (`**bold**` and `` `code` `` are the only markup).
    Para(String),
    /// A bulleted list.
    List(Vec<String>),
    /// A table.
    Table {
        /// Column names.
        header: Vec<String>,
        /// Rows, as many cells as columns.
        rows: Vec<Vec<String>>,
    },
    /// A plot.
    Figure {
        /// File stem in `report/` (`NAME.svg`).
        name: String,
        /// Caption.
        caption: String,
        /// The SVG text.
        svg: String,
    },
}

/// The report as blocks, rendered to Markdown or HTML.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Its blocks, in order.
    pub blocks: Vec<Block>,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

macro_rules! row {
    ($($cell:expr),* $(,)?) => { vec![$($cell.to_string()),*] };
}

impl Report {
    fn heading(&mut self, level: u8, text: impl Into<String>) {
        self.blocks.push(Block::Heading(level, text.into()));
    }

    fn para(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Para(text.into()));
    }

    fn table(&mut self, header: &[&str], rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows,
        });
    }

    fn figure(&mut self, name: &str, caption: &str, svg: Result<String>) -> Result<()> {
        self.blocks.push(Block::Figure {
            name: name.to_owned(),
            caption: caption.to_owned(),
            svg: svg?,
        });
        Ok(())
    }

    /// The report as Markdown; figures link to `report/NAME.svg`.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for block in &self.blocks {
            match block {
                Block::Heading(level, text) => {
                    let _ = writeln!(out, "{} {text}\n", "#".repeat(usize::from(*level)));
                }
                Block::Para(text) => {
                    let _ = writeln!(out, "{text}\n");
                }
                Block::List(items) => {
                    for item in items {
                        let _ = writeln!(out, "- {item}");
                    }
                    out.push('\n');
                }
                Block::Table { header, rows } => {
                    let _ = writeln!(out, "| {} |", header.join(" | "));
                    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                    for row in rows {
                        let _ = writeln!(out, "| {} |", row.join(" | "));
                    }
                    out.push('\n');
                }
                Block::Figure { name, caption, .. } => {
                    let _ = writeln!(out, "![{caption}](report/{name}.svg)\n");
                }
            }
        }
        out
    }

    /// The report as one HTML page: inline SVG, inline CSS, no scripts, no links out.
    pub fn html(&self) -> String {
        let mut out = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>phase7 run report</title>\n<style>\n\
             body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\n\
             table{border-collapse:collapse;margin:0.5em 0 1.2em}\n\
             th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left;vertical-align:top}\n\
             th{background:#f3f3f3}\n\
             figure{margin:1em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\n\
             figcaption{font-size:0.9em;color:#555}\n\
             code{background:#f5f5f5;padding:0 0.2em}\n\
             </style>\n</head>\n<body>\n",
        );
        for block in &self.blocks {
            match block {
                Block::Heading(level, text) => {
                    let _ = writeln!(out, "<h{level}>{}</h{level}>", inline_html(text));
                }
                Block::Para(text) => {
                    let _ = writeln!(out, "<p>{}</p>", inline_html(text));
                }
                Block::List(items) => {
                    out.push_str("<ul>\n");
                    for item in items {
                        let _ = writeln!(out, "<li>{}</li>", inline_html(item));
                    }
                    out.push_str("</ul>\n");
                }
                Block::Table { header, rows } => {
                    out.push_str("<table>\n<tr>");
                    for h in header {
                        let _ = write!(out, "<th>{}</th>", inline_html(h));
                    }
                    out.push_str("</tr>\n");
                    for row in rows {
                        out.push_str("<tr>");
                        for c in row {
                            let _ = write!(out, "<td>{}</td>", inline_html(c));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</table>\n");
                }
                Block::Figure { name, caption, svg } => {
                    let _ = writeln!(
                        out,
                        "<figure id=\"{name}\">\n{}\n<figcaption>{}</figcaption>\n</figure>",
                        svg.trim(),
                        inline_html(caption)
                    );
                }
            }
        }
        out.push_str("</body>\n</html>\n");
        out
    }

    /// How many figures it has.
    pub fn figures(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| matches!(b, Block::Figure { .. }))
            .count()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes `text` and turns `**bold**` and `` `code` `` into tags.
fn inline_html(text: &str) -> String {
    let escaped = escape(text);
    let mut out = String::new();
    let (mut bold, mut code) = (false, false);
    let mut rest = escaped.as_str();
    while let Some(i) = rest.find(['*', '`']) {
        out.push_str(&rest[..i]);
        if rest[i..].starts_with("**") && !code {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[i + 2..];
        } else if rest[i..].starts_with('`') {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
            rest = &rest[i + 1..];
        } else {
            out.push('*');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    if code {
        out.push_str("</code>");
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

/// Builds the report from whatever stages of `run` are done.
pub fn build_report(run: &RunDir) -> Result<Report> {
    let mut r = Report::default();
    let manifest = run.manifest()?;
    let experts = stages::roles(run).map(|r| r.len()).unwrap_or(0);
    let test = read::<SelfTest>(&run.stage_dir("validate").join("self_test.json"));
    r.heading(1, "phase7 run report");
    let config_text = std::fs::read_to_string(run.root.join("config.toml")).unwrap_or_default();
    let config: Option<crate::Config> = crate::Config::parse(&config_text).ok();
    if let Some(c) = &config {
        r.para(format!(
            "Model `{}`, preset `{}`, seed {}. Every number below was measured by this run and read back from its files.",
            c.model.path.display(),
            c.preset,
            c.seed
        ));
    }
    if let Some(t) = &test {
        let chosen = t.chosen();
        r.para(format!(
            "**Outcome:** {} experts; held-out overall accuracy {:.3} -> {:.3} ({:+.1}%) with mixture {:?}; self-test **{}**.",
            experts,
            t.base.overall,
            chosen.scores.overall,
            100.0 * (chosen.scores.overall / t.base.overall - 1.0),
            chosen.alphas,
            if t.passed { "passed" } else { "failed" }
        ));
    }

    // Stages: time and cost.
    r.heading(2, "Stages");
    let (mut total, mut cost) = (0.0, 0.0);
    let mut rows = Vec::new();
    let (mut names, mut seconds) = (Vec::new(), Vec::new());
    for name in stage_names(experts) {
        match manifest.stages.get(&name) {
            Some(s) => {
                total += s.seconds;
                cost += s.cost_usd;
                rows.push(row![
                    name,
                    format!("{:.1}", s.seconds),
                    format!("${:.2}", s.cost_usd),
                    s.outputs.len()
                ]);
                names.push(name);
                seconds.push(s.seconds);
            }
            None => rows.push(row![name, "not done", "", ""]),
        }
    }
    r.table(&["stage", "seconds", "cost (USD)", "files"], rows);
    r.para(format!(
        "Total {total:.1} s of stage time; paid API cost ${cost:.2} (problems came from the offline `synth-tasks` generators)."
    ));
    if !names.is_empty() {
        r.figure(
            "time",
            "Wall time per stage (seconds); cost per stage is in the table.",
            charts::bars("Time per stage", "seconds", &names, &[("seconds", seconds)]),
        )?;
    }

    // R1 and R2.
    if let Some(check) = read::<serde_json::Value>(&run.stage_dir("handoff").join("check.json")) {
        r.heading(2, "Phase 6 handoff (R1)");
        let list = |key: &str| {
            check[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into())
        };
        r.para(format!(
            "Handoff `{}`: required fields missing: {}; optional fields missing: {}.",
            check["handoff"].as_str().unwrap_or("(none)"),
            list("missing_required"),
            list("missing_optional")
        ));
    }
    if let Some(v) = read::<serde_json::Value>(&run.stage_dir("dequantize").join("verify.json")) {
        r.heading(2, "Dequantization (R2)");
        r.para(format!(
            "Top-1 agreement of the float32 model with the quantized forward: {:.4} over {} positions of {} held-out prompts (required {}).",
            v["top1_agreement"].as_f64().unwrap_or(f64::NAN),
            v["positions"],
            v["prompts"],
            v["required"]
        ));
    }

    // Stage 1.
    let profile = read::<Profile>(&run.stage_dir("profile").join("profile.json"));
    if let Some(p) = &profile {
        r.heading(2, "Capability profile (stage 1)");
        r.table(
            &[
                "domain",
                "difficulty",
                "accuracy",
                "95% interval",
                "pass rate",
                "ECE",
                "learning-zone difficulty",
            ],
            p.domains
                .iter()
                .map(|d| {
                    row![
                        d.domain.name(),
                        d.difficulty,
                        f3(d.accuracy),
                        format!("[{:.3}, {:.3}]", d.accuracy_ci95[0], d.accuracy_ci95[1]),
                        f3(d.pass_rate),
                        f3(d.ece),
                        format!(
                            "{} ({:.3})",
                            d.learning_zone_difficulty, d.learning_zone_accuracy
                        )
                    ]
                })
                .collect(),
        );
    }
    if let Some(plan) = read::<PlanRecord>(&run.stage_dir("plan").join("plan.json")) {
        r.heading(2, "Expert plan: the model's measurements decide N");
        r.para(format!(
            "N = {} (source: {}). {}",
            plan.plan.num_experts, plan.source, plan.plan.reasoning
        ));
        r.blocks.push(Block::List(
            plan.plan
                .expert_definitions
                .iter()
                .map(|e| {
                    format!(
                        "expert {} `{}` ({}): {}",
                        e.id,
                        e.name,
                        e.domains.join(", "),
                        e.rationale
                    )
                })
                .collect(),
        ));
    }
    let datasets: Vec<DatasetReport> = (0..experts)
        .filter_map(|k| {
            read::<DatasetReport>(
                &run.stage_dir("data")
                    .join(format!("dataset_{k}.report.json")),
            )
        })
        .collect();
    if !datasets.is_empty() {
        r.heading(2, "Validated training data (stage 1)");
        r.table(
            &[
                "expert",
                "wanted",
                "validated",
                "accepted",
                "first-batch acceptance",
                "expected accuracy",
                "rejections",
            ],
            datasets
                .iter()
                .map(|d| {
                    row![
                        d.expert,
                        d.wanted,
                        d.validated,
                        d.accepted,
                        f3(d.initial_acceptance_rate),
                        format!(
                            "{:.3}{}",
                            d.expected_accuracy,
                            if d.in_learning_zone { " (in zone)" } else { "" }
                        ),
                        d.rejections
                            .iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ]
                })
                .collect(),
        );
    }

    // Before and after.
    if let Some(t) = &test {
        let chosen = t.chosen();
        r.heading(
            2,
            format!(
                "Capability before and after ({} held-out scenarios)",
                t.scenarios
            ),
        );
        let domains: Vec<String> = t.base.accuracy.keys().cloned().collect();
        let mut rows: Vec<Vec<String>> = domains
            .iter()
            .map(|d| row![d, f3(t.base.accuracy[d]), f3(chosen.scores.accuracy[d])])
            .collect();
        rows.push(row![
            "**overall**",
            f3(t.base.overall),
            format!(
                "{:.3} ({:+.1}%)",
                chosen.scores.overall,
                100.0 * (chosen.scores.overall / t.base.overall - 1.0)
            )
        ]);
        r.table(&["domain", "base", "final"], rows);
        r.figure(
            "capability",
            "Held-out accuracy per domain: the base model and the chosen mixture.",
            charts::bars(
                "Capability before and after",
                "accuracy",
                &domains,
                &[
                    ("base", domains.iter().map(|d| t.base.accuracy[d]).collect()),
                    (
                        "final",
                        domains.iter().map(|d| chosen.scores.accuracy[d]).collect(),
                    ),
                ],
            ),
        )?;
        let rate = |r: Option<f64>| r.map_or("-".to_owned(), f3);
        r.table(
            &[
                "suite",
                "preference before",
                "after",
                "behaviour before",
                "after",
            ],
            t.base
                .suites
                .iter()
                .map(|(name, before)| {
                    let after = &chosen.scores.suites[name];
                    row![
                        name,
                        f3(before.preference),
                        f3(after.preference),
                        rate(before.behaviour_rate),
                        rate(after.behaviour_rate)
                    ]
                })
                .collect(),
        );
        r.para(format!(
            "Self-test: **{}** with mixture {:?} after {} attempt(s).",
            if t.passed { "passed" } else { "failed" },
            chosen.alphas,
            t.attempts.len()
        ));
        r.blocks.push(Block::List(
            chosen
                .criteria
                .iter()
                .map(|c| {
                    format!(
                        "{}: {:.4}, needs {} — {}{}",
                        c.name,
                        c.value,
                        c.required,
                        if c.passed { "held" } else { "not held" },
                        if c.enforced {
                            ""
                        } else {
                            " (reported, not enforced)"
                        }
                    )
                })
                .collect(),
        ));
    }

    // Stage 2.
    for k in 0..experts {
        let dir = run.stage_dir(&stages::expert_stage(k));
        let Some(outcome) = read::<serde_json::Value>(&dir.join("outcome.json")) else {
            continue;
        };
        r.heading(2, format!("Expert {k}"));
        if let (Some(before), Some(after)) = (
            outcome["accuracy_before"].as_object(),
            outcome["accuracy_after"].as_object(),
        ) {
            r.table(
                &["domain", "before", "after"],
                before
                    .iter()
                    .map(|(d, b)| {
                        row![
                            d,
                            f3(b.as_f64().unwrap_or(f64::NAN)),
                            f3(after[d].as_f64().unwrap_or(f64::NAN))
                        ]
                    })
                    .collect(),
            );
        }
        let mut curves: [(&str, Vec<(f64, f64)>); 4] = [
            ("validation score", vec![]),
            ("mean reward", vec![]),
            ("alignment", vec![]),
            ("mean KL x 10", vec![]),
        ];
        let mut markers = Vec::new();
        for event in outcome["training"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let epoch = event["epoch"].as_f64().unwrap_or(f64::NAN);
            match event["event"].as_str() {
                Some("validated") => {
                    let v = &event["validation"];
                    for (i, value) in [
                        &v["score"],
                        &event["mean_reward"],
                        &v["alignment"],
                        &event["mean_kl"],
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        if let Some(x) = value.as_f64() {
                            curves[i].1.push((epoch, if i == 3 { 10.0 * x } else { x }));
                        }
                    }
                }
                Some("kl_coefficient") => markers.push((epoch, "KL coefficient".to_owned())),
                Some("restarted") => markers.push((epoch, "restart".to_owned())),
                Some("stopped") => markers.push((epoch, "stop".to_owned())),
                _ => {}
            }
        }
        let curves: Vec<(&str, Vec<(f64, f64)>)> =
            curves.into_iter().filter(|c| !c.1.is_empty()).collect();
        if !curves.is_empty() {
            r.figure(
                &format!("expert-{k}"),
                &format!("Expert {k}: per-epoch validation score, mean reward, alignment preference and mean KL (x10); gate interventions marked."),
                charts::lines(&format!("Expert {k} training"), "epoch", "value", &curves, &markers),
            )?;
        }
        r.para(format!(
            "Gate: {}; {} optimiser steps.",
            outcome["gate_report"]["verdict"], outcome["training"]["step"]
        ));
    }

    // Stage 3.
    if let Some(search) = read::<SearchOutcome>(&run.stage_dir("search").join("search.json")) {
        r.heading(2, "Mixture search");
        r.para(format!(
            "{} generations, {} evaluations ({} from the cache); ended: {}.",
            search.generations, search.stats.requested, search.stats.cache_hits, search.reason
        ));
        let action_names = |g: &self_eval::search::GuidanceRecord| -> Vec<String> {
            g.actions
                .iter()
                .filter_map(|a| {
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v["action"].as_str().map(str::to_owned))
                })
                .collect()
        };
        let markers: Vec<(f64, String)> = search
            .guidance
            .iter()
            .map(|g| (g.generation as f64, action_names(g).join("+")))
            .collect();
        r.figure(
            "hypervolume",
            "Hypervolume of the feasible front per generation; vertical lines are guidance points, labelled with what was done.",
            charts::lines(
                "Front hypervolume over generations",
                "generation",
                "hypervolume",
                &[(
                    "hypervolume",
                    search
                        .curve
                        .iter()
                        .map(|c| (c.generation as f64, c.hypervolume))
                        .collect(),
                )],
                &markers,
            ),
        )?;
        let archive: Vec<(Vec<f64>, self_eval::mixture::MixtureScores)> =
            read(&run.stage_dir("search").join("archive.json")).unwrap_or_default();
        let base: Option<self_eval::mixture::MixtureScores> =
            read(&run.stage_dir("search").join("base_scores.json"));
        let mut layers = vec![
            (
                "every mixture scored",
                archive
                    .iter()
                    .map(|(_, s)| (s.overall, s.worst))
                    .collect::<Vec<_>>(),
                2,
            ),
            (
                "final front",
                search
                    .front
                    .iter()
                    .map(|m| (m.scores.overall, m.scores.worst))
                    .collect(),
                5,
            ),
        ];
        if let Some(b) = &base {
            layers.push(("base model", vec![(b.overall, b.worst)], 6));
        }
        r.figure(
            "front",
            "Search-set objectives of every mixture the search scored (grey), the final Pareto front, and the base model.",
            charts::scatter("Pareto front", "overall accuracy", "worst-domain accuracy", &layers),
        )?;
        r.table(
            &[
                "generation",
                "hypervolume",
                "gain",
                "source",
                "actions",
                "next window's gain",
                "new front points",
            ],
            search
                .guidance
                .iter()
                .map(|g| {
                    row![
                        g.generation,
                        format!("{:.4}", g.hypervolume),
                        g.gain.map_or("-".into(), |v| format!("{v:+.4}")),
                        g.source,
                        action_names(g).join(", "),
                        g.next_hypervolume_gain
                            .map_or("-".into(), |v| format!("{v:+.5}")),
                        g.next_front_entries.map_or("-".into(), |n| n.to_string())
                    ]
                })
                .collect(),
        );
    }
    if let Some(d) = read::<DispatchReport>(&run.stage_dir("validate").join("dispatch.json")) {
        r.heading(2, "Dispatch");
        r.para(format!(
            "Router accuracy {:.3}; overall {:.3} against the static mixture's {:.3}; first pass {:.2} ms per query, switch {:.2} ms.",
            d.router_accuracy, d.overall, d.static_overall, d.first_pass_ms, d.switch_ms
        ));
    }
    Ok(r)
}

/// Writes `report.md`, `report/*.svg` and `report.html` in the run directory from
/// whatever stages are done (atomically, file by file); returns the report.
pub fn write_report(run: &RunDir) -> Result<Report> {
    let report = build_report(run)?;
    let figures = run.root.join("report");
    std::fs::create_dir_all(&figures).map_err(|e| io_error(&figures, e))?;
    for block in &report.blocks {
        if let Block::Figure { name, svg, .. } = block {
            let path = figures.join(format!("{name}.svg"));
            bitnet_dequant::io::write_atomic(&path, svg.as_bytes())
                .map_err(|e| io_error(&path, e))?;
        }
    }
    for (name, text) in [
        ("report.md", report.markdown()),
        ("report.html", report.html()),
    ] {
        let path = run.root.join(name);
        bitnet_dequant::io::write_atomic(&path, text.as_bytes()).map_err(|e| io_error(&path, e))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markup_is_escaped_then_tagged() {
        assert_eq!(
            inline_html("a **b** `c<d>` 2*3"),
            "a <strong>b</strong> <code>c&lt;d&gt;</code> 2*3"
        );
    }

    #[test]
    fn markdown_and_html_carry_the_same_blocks() {
        let mut r = Report::default();
        r.heading(2, "Stages");
        r.table(&["stage", "seconds"], vec![row!["plan", "1.0"]]);
        r.figure("time", "Time", Ok("<svg></svg>".into())).unwrap();
        let md = r.markdown();
        assert!(md.contains("## Stages") && md.contains("| plan | 1.0 |"));
        assert!(md.contains("![Time](report/time.svg)"));
        let html = r.html();
        assert!(html.contains("<h2>Stages</h2>") && html.contains("<td>plan</td>"));
        assert!(html.contains("<figure id=\"time\">\n<svg></svg>"));
        assert!(!html.contains("<script") && !html.contains("http"));
        assert_eq!(r.figures(), 1);
    }
}
