//! `cargo xtask slurm up|down|status` and `cargo xtask test --slurm`: a real one-node
//! Slurm cluster on this machine for the Slurm executor's tests. `up` installs
//! Debian's `slurmctld`, `slurmd`, `munge` and `slurm-client` where missing (root
//! only), writes a one-node `/etc/slurm/slurm.conf` (never over one it did not write),
//! starts munged, slurmctld and slurmd, and waits until the node is idle; `down` stops
//! the daemons it started.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const CONF: &str = "/etc/slurm/slurm.conf";
const MARKER: &str = "# Written by `cargo xtask slurm up`";
const PID_FILES: &[(&str, &str)] = &[
    ("slurmd", "/run/slurmd.pid"),
    ("slurmctld", "/run/slurmctld.pid"),
    ("munged", "/run/munge/munged.pid"),
];

fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn is_root() -> bool {
    run("id", &["-u"]).is_ok_and(|u| u.trim() == "0")
}

fn installed() -> bool {
    ["slurmctld", "slurmd", "munged", "sbatch", "squeue"]
        .iter()
        .all(|p| {
            Command::new("sh")
                .args(["-c", &format!("command -v {p} || test -x /usr/sbin/{p}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn running(pid_file: &str) -> bool {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The node's name as slurmd sees it, its CPUs and memory (MiB, with headroom).
fn node() -> Result<(String, usize, u64)> {
    let host = run("hostname", &["-s"])?.trim().to_owned();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok((host, cpus, total_kib / 1024 * 9 / 10))
}

/// Starts the one-node cluster (installing and configuring it first when needed).
pub fn up() -> Result<()> {
    if !installed() {
        if !is_root() {
            bail!(
                "Slurm is not installed and this is not root: install Debian's slurmctld, slurmd, munge and slurm-client, or run as root"
            );
        }
        eprintln!("xtask slurm: installing slurmctld, slurmd, munge, slurm-client (apt-get)");
        run("apt-get", &["update", "-qq"])?;
        let status = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "slurmctld",
                "slurmd",
                "munge",
                "slurm-client",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get install failed ({status})");
        }
    }
    if !is_root() {
        bail!("starting slurmctld and slurmd needs root");
    }
    let (host, cpus, memory) = node()?;
    match std::fs::read_to_string(CONF) {
        Ok(text) if !text.starts_with(MARKER) => {
            bail!(
                "{CONF} exists and was not written by xtask: not touching a real cluster's configuration"
            )
        }
        _ => {
            let conf = format!(
                "{MARKER}: a one-node cluster on this machine for phase7's tests.\n\
                 ClusterName=phase7\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nStateSaveLocation=/var/spool/slurmctld\nSlurmdSpoolDir=/var/spool/slurmd\n\
                 SlurmctldPidFile=/run/slurmctld.pid\nSlurmdPidFile=/run/slurmd.pid\n\
                 SlurmctldLogFile=/var/log/slurm/slurmctld.log\nSlurmdLogFile=/var/log/slurm/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nReturnToService=2\n\
                 SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
                 MpiDefault=none\nMailProg=/bin/true\nAccountingStorageType=accounting_storage/none\n\
                 JobCompType=jobcomp/none\nJobAcctGatherType=jobacct_gather/none\n\
                 NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN\n\
                 PartitionName=local Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
            );
            std::fs::create_dir_all("/etc/slurm")?;
            std::fs::write(CONF, conf).with_context(|| format!("cannot write {CONF}"))?;
        }
    }
    for dir in [
        "/var/spool/slurmctld",
        "/var/spool/slurmd",
        "/var/log/slurm",
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    if !running("/run/munge/munged.pid") {
        for dir in ["/run/munge", "/var/log/munge", "/var/lib/munge"] {
            std::fs::create_dir_all(dir)?;
            run("chown", &["munge:munge", dir])?;
        }
        run("runuser", &["-u", "munge", "--", "/usr/sbin/munged"])?;
    }
    if !running("/run/slurmctld.pid") {
        run("slurmctld", &[])?;
    }
    if !running("/run/slurmd.pid") {
        run("slurmd", &[])?;
    }
    let started = Instant::now();
    loop {
        let state = run("sinfo", &["--noheader", "--format=%T"]).unwrap_or_default();
        let state = state.trim();
        if state == "idle" || state == "mixed" || state == "allocated" {
            eprintln!("xtask slurm: node {host} is {state} ({cpus} CPUs, {memory} MiB)");
            return Ok(());
        }
        if state.starts_with("down") || state.starts_with("drain") {
            let _ = run(
                "scontrol",
                &["update", &format!("nodename={host}"), "state=resume"],
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the node is `{state}` after 60 s; see /var/log/slurm/slurmctld.log and slurmd.log"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops the daemons `up` started (running jobs are killed with them).
pub fn down() -> Result<()> {
    for (name, pid_file) in PID_FILES {
        let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if running(pid_file) {
            let _ = run("kill", &[&pid.to_string()]);
            let started = Instant::now();
            while running(pid_file) && started.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("xtask slurm: stopped {name} ({pid})");
        }
    }
    Ok(())
}

/// What runs.
pub fn status() -> Result<()> {
    for (name, pid_file) in PID_FILES {
        eprintln!(
            "{name}: {}",
            if running(pid_file) {
                "running"
            } else {
                "stopped"
            }
        );
    }
    if running("/run/slurmctld.pid") {
        eprint!("{}", run("sinfo", &[])?);
    }
    Ok(())
}

/// `cargo xtask test --slurm`: the cluster up, the Slurm executor's tests (ignored in
/// the default suite), the cluster down again.
pub fn test(root: &Path) -> Result<()> {
    let was_running = running("/run/slurmctld.pid");
    up()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "test",
            "--locked",
            "-p",
            "phase7",
            "--test",
            "slurm",
            "--",
            "--ignored",
            "--test-threads=1",
        ])
        .current_dir(root)
        .status()
        .context("cannot run cargo test")?;
    if !was_running {
        down()?;
    }
    if !status.success() {
        bail!("the Slurm tests failed ({status})");
    }
    Ok(())
}
