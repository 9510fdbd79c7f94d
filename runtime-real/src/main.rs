//! `sluice`: the Kafka-compatible broker (`sluice serve`) and its load generator
//! (`sluice perf produce|consume`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sluice_runtime_real::{config, perf, server};

#[global_allocator]
static ALLOC: sluice_runtime_real::alloc::BrokerAlloc = sluice_runtime_real::alloc::BrokerAlloc;

/// A Kafka-compatible message broker: Kafka's wire protocol, Kafka's properties, Kafka's tools.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker (the default). With no arguments: a single node on
    /// PLAINTEXT://127.0.0.1:9092 with its data in ./data.
    Serve(ServeArgs),
    /// Load generator: produce or consume as fast as the broker allows
    Perf {
        #[command(subcommand)]
        mode: perf::Mode,
    },
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// A server.properties file, as kafka-server-start.sh takes it
    #[arg(value_name = "FILE")]
    properties: Option<PathBuf>,
    /// The same, as an option
    #[arg(long = "config", value_name = "FILE", conflicts_with = "properties")]
    config: Option<PathBuf>,
    /// Set a property over the file's value (repeatable)
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn main() {
    let properties = format!(
        "Properties (Kafka's names; in the file as key=value, or with --override key=value):\n\n{}",
        sluice_core::properties::help_table()
    );
    let command = Cli::command().mut_subcommand("serve", |c| c.after_long_help(properties));
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        None => serve(ServeArgs::default()),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Perf { mode }) => perf::main(mode),
    };
    if let Err(e) = result {
        eprintln!("sluice: {e}");
        std::process::exit(2);
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    // A panic anywhere (the core thread included) ends the process, so a supervisor restarts
    // it, rather than leaving a broker that accepts connections and answers nothing.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let filter = || tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
        // One JSON object per line, for log shippers.
        Ok("json") => tracing_subscriber::fmt().json().with_env_filter(filter()).with_writer(std::io::stderr).init(),
        Ok("text") | Err(_) => tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
        Ok(other) => return Err(format!("SLUICE_LOG_FORMAT={other:?}: use json or text")),
    }
    let mut props = BTreeMap::new();
    if let Some(path) = args.properties.or(args.config) {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        props = config::parse_properties(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for o in args.overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| format!("--override {o:?}: expected key=value"))?;
        props.insert(k.trim().to_string(), v.trim().to_string());
    }
    let cfg = config::build(&props)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    server::run(cfg)
}
