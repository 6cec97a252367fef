//! `report.md`: what a run measured, read back from its files: capability before and
//! after per domain, each expert's training, the search and its guidance, the self-test,
//! dispatch, and time per stage. (The HTML report with plots is not in this build; the
//! search's SVG plots are in `search/`.)

use std::fmt::Write as _;
use std::path::Path;

use self_eval::dispatch::DispatchReport;
use self_eval::search::SearchOutcome;
use self_eval::selftest::SelfTest;

use crate::run::{RunDir, io_error};
use crate::{Result, stage_names, stages};

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `report.md` in the run directory from whatever stages are done; returns it.
pub fn write_report(run: &RunDir) -> Result<String> {
    let mut out = String::from("# phase7 run report\n\n");
    let manifest = run.manifest()?;
    let experts = stages::roles(run).map(|r| r.len()).unwrap_or(0);

    let _ = writeln!(
        out,
        "## Stages\n\n| stage | seconds | files |\n|---|---|---|"
    );
    let mut total = 0.0;
    for name in stage_names(experts) {
        match manifest.stages.get(&name) {
            Some(r) => {
                total += r.seconds;
                let _ = writeln!(out, "| {name} | {:.1} | {} |", r.seconds, r.outputs.len());
            }
            None => {
                let _ = writeln!(out, "| {name} | not done | |");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nTotal {total:.1} s; paid API cost $0.00 (offline).\n"
    );

    if let Some(test) = read::<SelfTest>(&run.stage_dir("validate").join("self_test.json")) {
        let chosen = test.chosen();
        let _ = writeln!(
            out,
            "## Capability before and after ({} held-out scenarios)\n\n| domain | base | final |\n|---|---|---|",
            test.scenarios
        );
        for (domain, before) in &test.base.accuracy {
            let _ = writeln!(
                out,
                "| {domain} | {before:.3} | {:.3} |",
                chosen.scores.accuracy[domain]
            );
        }
        let _ = writeln!(
            out,
            "| **overall** | {:.3} | {:.3} ({:+.1}%) |\n",
            test.base.overall,
            chosen.scores.overall,
            100.0 * (chosen.scores.overall / test.base.overall - 1.0)
        );
        let _ = writeln!(
            out,
            "| suite | preference before | after | behaviour before | after |\n|---|---|---|---|---|"
        );
        for (name, before) in &test.base.suites {
            let after = &chosen.scores.suites[name];
            let rate = |r: Option<f64>| r.map_or("-".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "| {name} | {:.3} | {:.3} | {} | {} |",
                before.preference,
                after.preference,
                rate(before.behaviour_rate),
                rate(after.behaviour_rate)
            );
        }
        let _ = writeln!(
            out,
            "\nSelf-test: **{}** with mixture {:?} after {} attempt(s). Criteria:\n",
            if test.passed { "passed" } else { "failed" },
            chosen.alphas,
            test.attempts.len()
        );
        for c in &chosen.criteria {
            let _ = writeln!(
                out,
                "- {}: {:.4}, needs {} — {}{}",
                c.name,
                c.value,
                c.required,
                if c.passed { "held" } else { "not held" },
                if c.enforced {
                    ""
                } else {
                    " (reported, not enforced)"
                }
            );
        }
        out.push('\n');
    }

    for k in 0..experts {
        let dir = run.stage_dir(&stages::expert_stage(k));
        if let Some(outcome) = read::<serde_json::Value>(&dir.join("outcome.json")) {
            let _ = writeln!(out, "## Expert {k}\n");
            if let (Some(before), Some(after)) = (
                outcome["accuracy_before"].as_object(),
                outcome["accuracy_after"].as_object(),
            ) {
                let _ = writeln!(out, "| domain | before | after |\n|---|---|---|");
                for (d, b) in before {
                    let _ = writeln!(
                        out,
                        "| {d} | {:.3} | {:.3} |",
                        b.as_f64().unwrap_or(f64::NAN),
                        after[d].as_f64().unwrap_or(f64::NAN)
                    );
                }
            }
            let _ = writeln!(
                out,
                "\nGate: {}; {} optimiser steps.\n",
                outcome["gate_report"]["verdict"], outcome["training"]["step"]
            );
        }
    }

    if let Some(search) = read::<SearchOutcome>(&run.stage_dir("search").join("search.json")) {
        let _ = writeln!(
            out,
            "## Search\n\n{} generations, {} evaluations ({} from the cache); ended: {}. Plots: `search/hypervolume.svg`, `search/front.svg`.\n",
            search.generations, search.stats.requested, search.stats.cache_hits, search.reason
        );
        let _ = writeln!(
            out,
            "| generation | hypervolume | gain | actions | next window's gain | new front points |\n|---|---|---|---|---|---|"
        );
        for r in &search.guidance {
            let actions: Vec<String> = r
                .actions
                .iter()
                .map(|a| {
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v["action"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {:.4} | {} | {} | {} | {} |",
                r.generation,
                r.hypervolume,
                r.gain.map_or("-".into(), |g| format!("{g:+.4}")),
                actions.join(", "),
                r.next_hypervolume_gain
                    .map_or("-".into(), |g| format!("{g:+.5}")),
                r.next_front_entries.map_or("-".into(), |n| n.to_string())
            );
        }
        out.push('\n');
    }

    if let Some(d) = read::<DispatchReport>(&run.stage_dir("validate").join("dispatch.json")) {
        let _ = writeln!(
            out,
            "## Dispatch\n\nRouter accuracy {:.3}; overall {:.3} against the static mixture's {:.3}; first pass {:.2} ms per query, switch {:.2} ms.\n",
            d.router_accuracy, d.overall, d.static_overall, d.first_pass_ms, d.switch_ms
        );
    }
    let path = run.root.join("report.md");
    bitnet_dequant::io::write_atomic(&path, out.as_bytes()).map_err(|e| io_error(&path, e))?;
    Ok(out)
}
