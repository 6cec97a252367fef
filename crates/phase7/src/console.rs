//! What a run shows while it works: a progress bar per stage with its ETA on a terminal,
//! plain lines otherwise, or one JSON event per line (`--json`).
//!
//! Stages report through their log lines; a few have a fixed shape that this module
//! reads: `STAGE: started`, `STAGE: done in S s (N files)`, `STAGE: unchanged, skipped`
//! and [`progress_line`]'s `progress STAGE DONE/TOTAL`.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress line: `done` of `total` units of `stage`'s work.
pub fn progress_line(stage: &str, done: usize, total: usize) -> String {
    format!("progress {stage} {done}/{total}")
}

/// What a log line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// A stage started.
    Started(&'a str),
    /// A stage finished (`rest` says how long and how many files).
    Done(&'a str, &'a str),
    /// A stage was unchanged.
    Skipped(&'a str),
    /// Progress within a stage.
    Progress(&'a str, usize, usize),
    /// Anything else, with the stage (or subject) named before its first `: `.
    Info(Option<&'a str>, &'a str),
}

/// Reads a log line.
pub fn classify(line: &str) -> Line<'_> {
    if let Some(rest) = line.strip_prefix("progress ") {
        let mut parts = rest.splitn(2, ' ');
        if let (Some(stage), Some(count)) = (parts.next(), parts.next())
            && let Some((done, total)) = count.split_once('/')
            && let (Ok(done), Ok(total)) = (done.parse(), total.parse())
        {
            return Line::Progress(stage, done, total);
        }
    }
    match line.split_once(": ") {
        Some((stage, "started")) => Line::Started(stage),
        Some((stage, "unchanged, skipped")) => Line::Skipped(stage),
        Some((stage, rest)) if rest.starts_with("done in ") => Line::Done(stage, rest),
        Some((subject, message)) if !subject.contains(' ') => Line::Info(Some(subject), message),
        _ => Line::Info(None, line),
    }
}

/// The line as a JSON event: `{"t": seconds since the start, "event": ..., ...}`.
pub fn json_event(line: &str, seconds: f64) -> String {
    let t = (seconds * 1000.0).round() / 1000.0;
    let value = match classify(line) {
        Line::Started(stage) => serde_json::json!({"t": t, "event": "started", "stage": stage}),
        Line::Done(stage, rest) => {
            serde_json::json!({"t": t, "event": "done", "stage": stage, "message": rest})
        }
        Line::Skipped(stage) => serde_json::json!({"t": t, "event": "skipped", "stage": stage}),
        Line::Progress(stage, done, total) => serde_json::json!({
            "t": t, "event": "progress", "stage": stage, "done": done, "total": total
        }),
        Line::Info(subject, message) => {
            serde_json::json!({"t": t, "event": "log", "subject": subject, "message": message})
        }
    };
    value.to_string()
}

enum Mode {
    Plain,
    Bars,
    Json,
}

/// Shows a run's log lines.
pub struct Console {
    mode: Mode,
    started: Instant,
    bar: Option<ProgressBar>,
    last_plain_percent: Option<usize>,
}

impl Console {
    /// JSON events when `json`; bars when stderr is a terminal; plain lines otherwise.
    pub fn new(json: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        };
        Self {
            mode,
            started: Instant::now(),
            bar: None,
            last_plain_percent: None,
        }
    }

    fn new_bar(stage: &str) -> ProgressBar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>12} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(stage.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    }

    /// Shows one line.
    pub fn line(&mut self, line: &str) {
        match self.mode {
            Mode::Json => println!("{}", json_event(line, self.started.elapsed().as_secs_f64())),
            Mode::Plain => match classify(line) {
                // Progress only every tenth, so logs stay readable.
                Line::Progress(stage, done, total) => {
                    let percent = 100 * done / total.max(1);
                    if self
                        .last_plain_percent
                        .is_none_or(|p| percent >= p + 10 || percent < p)
                    {
                        self.last_plain_percent = Some(percent);
                        eprintln!("[phase7] {stage}: {done}/{total} ({percent}%)");
                    }
                }
                _ => {
                    self.last_plain_percent = None;
                    eprintln!("[phase7] {line}");
                }
            },
            Mode::Bars => match classify(line) {
                Line::Started(stage) => {
                    if let Some(bar) = self.bar.take() {
                        bar.finish_and_clear();
                    }
                    self.bar = Some(Self::new_bar(stage));
                }
                Line::Progress(_, done, total) => {
                    if let Some(bar) = &self.bar {
                        if bar.length() != Some(total as u64) {
                            bar.set_length(total as u64);
                            bar.set_style(
                                ProgressStyle::with_template(
                                    "{prefix:>12} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta} {msg}",
                                )
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                            );
                        }
                        bar.set_position(done as u64);
                    }
                }
                Line::Done(stage, rest) => {
                    if let Some(bar) = self.bar.take() {
                        bar.finish_and_clear();
                    }
                    eprintln!("[phase7] {stage}: {rest}");
                }
                _ => match &self.bar {
                    Some(bar) => {
                        bar.println(format!("[phase7] {line}"));
                        bar.set_message(line.chars().take(60).collect::<String>());
                    }
                    None => eprintln!("[phase7] {line}"),
                },
            },
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_and_written_as_events() {
        assert_eq!(classify("search: started"), Line::Started("search"));
        assert_eq!(
            classify("search: unchanged, skipped"),
            Line::Skipped("search")
        );
        assert_eq!(
            classify("expert-0: done in 3.0 s (2 files)"),
            Line::Done("expert-0", "done in 3.0 s (2 files)")
        );
        assert_eq!(
            classify(&progress_line("expert-1", 3, 40)),
            Line::Progress("expert-1", 3, 40)
        );
        assert_eq!(
            classify("plan: N = 3: reasons"),
            Line::Info(Some("plan"), "N = 3: reasons")
        );
        let event: serde_json::Value =
            serde_json::from_str(&json_event(&progress_line("search", 5, 40), 1.23456)).unwrap();
        assert_eq!(
            event,
            serde_json::json!({"t": 1.235, "event": "progress", "stage": "search", "done": 5, "total": 40})
        );
    }
}
