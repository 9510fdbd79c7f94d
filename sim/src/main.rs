//! `sluice-sim`: run one seed, sweep many, list the planted bugs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_sim::{run_scenario, RunOpts, Scenario};

const USAGE: &str = "usage:
  sluice-sim run --seed N [--scenario default|quorum|cluster] [--trace FILE.jsonl] [--timeline FILE.html] [--mutant NAME] [--safety-ms MS] [--disk-faults] [--verbose]
  (--timeline: the run drawn as a picture: nodes, clients, requests, faults, violations; default and cluster scenarios)
  sluice-sim sweep --seeds A..B [--scenario default|quorum|cluster] [--jobs N] [--mutant NAME] [--safety-ms MS] [--disk-faults]
  (--disk-faults: failed syncs and corrupted reads on every node of the cluster scenario; CI sweeps 1,000 seeds with it)
  sluice-sim mutants
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("sweep") => cmd_sweep(&args[1..]),
        Some("mutants") => {
            for (m, name) in sluice_core::mutants::ALL {
                println!("{name} (scenario {})", sluice_core::mutants::scenario(*m));
            }
            Ok(0)
        }
        _ => Err(USAGE.to_string()),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("sluice-sim: {e}");
            std::process::exit(2);
        }
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn opts(args: &[String]) -> Result<RunOpts, String> {
    let mutant = opt(args, "--mutant").map(str::to_string);
    if let Some(m) = &mutant {
        if sluice_core::mutants::by_name(m).is_none() {
            return Err(format!("unknown mutant {m:?}; see `sluice-sim mutants`"));
        }
    }
    let safety_ms =
        opt(args, "--safety-ms").map(|s| s.parse().map_err(|_| format!("bad --safety-ms {s}"))).transpose()?;
    let scenario = match opt(args, "--scenario") {
        None => Scenario::Default,
        Some(s) => Scenario::parse(s).ok_or_else(|| format!("unknown scenario {s:?}: default, quorum or cluster"))?,
    };
    let disk_faults = args.iter().any(|a| a == "--disk-faults");
    let keep_trace = opt(args, "--trace").is_some() || opt(args, "--timeline").is_some();
    if opt(args, "--timeline").is_some() && scenario == Scenario::Quorum {
        return Err("--timeline draws the default and cluster scenarios; the quorum scenario has --trace".into());
    }
    Ok(RunOpts { mutant, keep_trace, safety_ms, scenario, disk_faults })
}

fn cmd_run(args: &[String]) -> Result<i32, String> {
    if args.iter().any(|a| a == "--verbose") {
        // The node's own logs, on stderr (wall-clock stamps are the host's, not simulated).
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .init();
    }
    let seed: u64 = opt(args, "--seed").ok_or("run needs --seed N")?.parse().map_err(|_| "bad --seed")?;
    let o = opts(args)?;
    let started = Instant::now();
    let r = run_scenario(seed, &o);
    let wall = started.elapsed();
    if let Some(path) = opt(args, "--trace") {
        std::fs::write(path, r.trace_lines.join("\n") + "\n").map_err(|e| format!("{path}: {e}"))?;
    }
    if let Some(path) = opt(args, "--timeline") {
        let title = format!("sluice-sim seed {seed} ({})", if r.ok { "passed" } else { "FAILED" });
        let html = sluice_sim::timeline::render(&title, &r.summary, &r.trace_lines, &r.violations);
        std::fs::write(path, html).map_err(|e| format!("{path}: {e}"))?;
        eprintln!("timeline written to {path}");
    }
    println!(
        "{}",
        r.summary.replace(
            "\ntrace=",
            &format!(
                "\nwall {:.1} ms ({:.0}x real time, {:.0} events/s)\ntrace=",
                wall.as_secs_f64() * 1e3,
                r.sim_ns as f64 / 1e9 / wall.as_secs_f64(),
                r.events as f64 / wall.as_secs_f64()
            )
        )
    );
    Ok(if r.ok { 0 } else { 1 })
}

fn cmd_sweep(args: &[String]) -> Result<i32, String> {
    let range = opt(args, "--seeds").ok_or("sweep needs --seeds A..B")?;
    let (a, b) = range.split_once("..").ok_or("--seeds takes A..B")?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| "bad seed range")?, b.parse().map_err(|_| "bad seed range")?);
    let jobs: usize = opt(args, "--jobs").map_or(Ok(2), |j| j.parse().map_err(|_| "bad --jobs"))?;
    let o = opts(args)?;
    let next = Arc::new(AtomicU64::new(a));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(AtomicU64::new(0));
    let sim_ns = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let total = b.saturating_sub(a) + 1;
    let mut handles = Vec::new();
    for _ in 0..jobs.max(1) {
        let (next, done, failures, events, sim_ns, o) =
            (next.clone(), done.clone(), failures.clone(), events.clone(), sim_ns.clone(), o.clone());
        handles.push(std::thread::spawn(move || loop {
            let seed = next.fetch_add(1, Ordering::SeqCst);
            if seed > b {
                return;
            }
            let r = run_scenario(seed, &o);
            events.fetch_add(r.events, Ordering::Relaxed);
            sim_ns.fetch_add(r.sim_ns, Ordering::Relaxed);
            if !r.ok {
                failures.lock().expect("not poisoned").push((seed, r.first_violation, r.replay));
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut last_line = 0;
    while done.load(Ordering::SeqCst) < total {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let d = done.load(Ordering::SeqCst);
        let secs = started.elapsed().as_secs_f64();
        let failing = failures.lock().expect("not poisoned").len();
        if tty {
            let bar = (d * 30 / total.max(1)) as usize;
            eprint!(
                "\r[{}{}] {d}/{total} seeds, {:.0} runs/s, {failing} failing ",
                "#".repeat(bar),
                " ".repeat(30 - bar),
                d as f64 / secs
            );
        } else if d * 10 / total.max(1) > last_line {
            // Not a terminal (CI logs): a line per tenth instead of a redrawn bar.
            last_line = d * 10 / total.max(1);
            eprintln!("{d}/{total} seeds, {:.0} runs/s, {failing} failing", d as f64 / secs);
        }
    }
    for h in handles {
        h.join().map_err(|_| "a sweep thread panicked")?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    let mut f = failures.lock().expect("not poisoned").clone();
    f.sort();
    println!(
        "swept {total} seeds in {secs:.1} s: {:.0} runs/s, {:.2e} events/s, {:.0} simulated s ({:.0}x real time); {} failing{}",
        total as f64 / secs,
        events.load(Ordering::Relaxed) as f64 / secs,
        sim_ns.load(Ordering::Relaxed) as f64 / 1e9,
        sim_ns.load(Ordering::Relaxed) as f64 / 1e9 / secs,
        f.len(),
        o.mutant.as_ref().map(|m| format!(" (mutant {m})")).unwrap_or_default()
    );
    for (seed, why, cmd) in &f {
        println!("seed {seed}: {why}\n  replay: {cmd}");
    }
    Ok(if f.is_empty() { 0 } else { 1 })
}
