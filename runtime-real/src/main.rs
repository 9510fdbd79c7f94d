//! `sluice`: the Kafka-compatible broker (`sluice serve`) and its load generator
//! (`sluice perf produce|consume`).

use sluice_runtime_real::{config, perf, server};

#[global_allocator]
static ALLOC: sluice_runtime_real::alloc::BrokerAlloc = sluice_runtime_real::alloc::BrokerAlloc;

use std::collections::BTreeMap;

const USAGE: &str = "usage:
  sluice serve [--config FILE] [--override key=value]...
      Runs a broker. With no arguments: single node, PLAINTEXT://127.0.0.1:9092, data in ./data.
      Properties use Kafka's names (listeners, advertised.listeners, log.dirs, num.partitions,
      auto.create.topics.enable, log.segment.bytes, log.retention.ms, message.max.bytes,
      socket.request.max.bytes, ...).
  sluice perf produce [--bootstrap HOST:PORT] [--topic T] [--records N] [--record-size B]
                      [--batch-records N] [--partitions P] [--acks -1|0|1] [--in-flight N]
                      [--rate RECORDS_PER_SEC]
  sluice perf consume [--bootstrap HOST:PORT] [--topic T] [--records N] [--partitions P]
                      [--fetch-max-bytes B]
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None | Some("serve") => serve(&args[args.len().min(1)..]),
        Some("perf") => perf::main(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    if let Err(e) = code {
        eprintln!("sluice: {e}");
        std::process::exit(2);
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    use std::io::IsTerminal;
    // A panic anywhere (the core thread included) ends the process, so a supervisor restarts
    // it, rather than leaving a broker that accepts connections and answers nothing.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut props = BTreeMap::new();
    let mut overrides = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                let path = it.next().ok_or("--config needs a file")?;
                let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                props = config::parse_properties(&text).map_err(|e| format!("{path}: {e}"))?;
            }
            "--override" => overrides.push(it.next().ok_or("--override needs key=value")?.clone()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| format!("--override {o:?}: expected key=value"))?;
        props.insert(k.trim().to_string(), v.trim().to_string());
    }
    let cfg = config::build(&props)?;
    server::run(cfg)
}
