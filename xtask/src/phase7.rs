//! `cargo xtask phase7`: the whole pipeline on the embedded default model, offline.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

/// Sets up libtorch if needed, then `phase7 run` (release build) with `args`, from the
/// repository root; the run directory defaults to `runs/default-seed0`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let report = setup::run(root, false)?;
    eprintln!("{report}");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "phase7",
            "--bin",
            "phase7",
            "--",
            "run",
        ])
        .args(args)
        .current_dir(root);
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("phase7 run failed ({status})");
    }
    Ok(())
}

/// The page that loads the report in a frame and measures what it shows; its result
/// lands in `#result` as `RESULT {json}`. (Chromium's `--dump-dom` prints the page after
/// the frame's `load`; `--allow-file-access-from-files` lets it read the frame.)
const CHECK_PAGE: &str = r#"<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<pre id="result">RESULT {"error":"the report never finished loading"}</pre>
<iframe id="report" src="REPORT_URL" style="width:1000px;height:800px"></iframe>
<script>
document.getElementById('report').addEventListener('load', () => {
  const doc = document.getElementById('report').contentDocument;
  const out = {figures: 0, svgs_drawn: 0, empty_figures: [], images: 0, images_broken: [], tables: 0};
  if (!doc) {
    document.getElementById('result').textContent = 'RESULT {"error":"the report frame is not readable"}';
    return;
  }
  out.figures = doc.querySelectorAll('figure').length;
  out.tables = doc.querySelectorAll('table').length;
  for (const figure of doc.querySelectorAll('figure')) {
    const svg = figure.querySelector('svg');
    const box = svg ? svg.getBBox() : {width: 0, height: 0};
    if (svg && box.width > 0 && box.height > 0 && svg.querySelectorAll('*').length > 10) {
      out.svgs_drawn++;
    } else {
      out.empty_figures.push(figure.id);
    }
  }
  for (const img of doc.querySelectorAll('img')) {
    out.images++;
    if (!(img.complete && img.naturalWidth > 0)) out.images_broken.push(img.getAttribute('src'));
  }
  document.getElementById('result').textContent = 'RESULT ' + JSON.stringify(out);
});
</script></body></html>
"#;

/// Finds Chromium, installing Debian's package when it is missing and this is root.
fn chromium() -> Result<String> {
    let found = |name: &str| {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if found(name) {
            return Ok(name.to_owned());
        }
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "no Chromium found (chromium, chromium-browser, google-chrome); install Debian's `chromium` package"
        );
    }
    eprintln!("installing Debian's chromium (apt-get) ...");
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null",
        ])
        .status()
        .context("cannot run apt-get")?;
    if !status.success() || !found("chromium") {
        bail!("installing chromium with apt-get failed ({status})");
    }
    Ok("chromium".into())
}

/// Opens `RUN/report.html` in headless Chromium; fails on any console message from the
/// report (it has no scripts, so any message is an error), on a figure whose SVG draws
/// nothing, on a broken image, or on a figure count other than the report's own.
pub fn check_report(root: &Path, run: &Path) -> Result<()> {
    let run = if run.is_absolute() {
        run.to_path_buf()
    } else {
        root.join(run)
    };
    let report = run.join("report.html");
    let html = std::fs::read_to_string(&report).with_context(|| {
        format!(
            "{}: cannot read the report (run `phase7 report RUN`)",
            report.display()
        )
    })?;
    let expected_figures = html.matches("<figure").count();
    let browser = chromium()?;
    let scratch = std::env::temp_dir().join(format!("phase7-report-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    let report_url = format!("file://{}", report.canonicalize()?.display());
    let page = scratch.join("check.html");
    std::fs::write(&page, CHECK_PAGE.replace("REPORT_URL", &report_url))?;
    let output = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=20000",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", scratch.join("profile").display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output()
        .with_context(|| format!("cannot run {browser}"))?;
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") && l.contains(&report_url))
        .collect();
    let result = stdout
        .split("RESULT ")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .with_context(|| format!("{browser} printed no result (exit {})", output.status))?;
    let result: serde_json::Value = serde_json::from_str(&result.replace("&quot;", "\""))
        .with_context(|| format!("unexpected result from the check page: {result}"))?;
    let mut problems = Vec::new();
    if let Some(error) = result["error"].as_str() {
        problems.push(error.to_owned());
    }
    problems.extend(console.iter().map(|l| format!("console: {l}")));
    let drawn = result["svgs_drawn"].as_u64().unwrap_or(0) as usize;
    let figures = result["figures"].as_u64().unwrap_or(0) as usize;
    if figures != expected_figures || drawn != figures {
        problems.push(format!(
            "{drawn} of {figures} figures drew their plot ({expected_figures} in the file); empty: {}",
            result["empty_figures"]
        ));
    }
    if let Some(broken) = result["images_broken"].as_array().filter(|b| !b.is_empty()) {
        let names: Vec<&str> = broken.iter().filter_map(|b| b.as_str()).collect();
        problems.push(format!("broken images: {}", names.join(", ")));
    }
    if !problems.is_empty() {
        bail!("{}: {}", report.display(), problems.join("; "));
    }
    println!(
        "{}: {figures} figures drawn, {} tables, {} images, no console messages ({browser} headless)",
        report.display(),
        result["tables"],
        result["images"]
    );
    Ok(())
}
