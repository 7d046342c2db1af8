//! The `regcache` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use regcache::config::{Config, Overrides};
use regcache::http::Registry;

/// A pull-through caching mirror for container registries.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mirror.
    Serve {
        /// Configuration file (TOML). Without one, regcache mirrors Docker Hub.
        #[arg(long, env = "REGCACHE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:5000).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (default ./regcache-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// URL of the (first) upstream registry.
        #[arg(long)]
        upstream: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve { config, listen, data_dir, upstream } => {
            let overrides = Overrides { listen, data_dir, upstream_url: upstream };
            let config = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("regcache: {e}");
                    return ExitCode::from(2);
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("regcache: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let registry = Registry::open(&config).context("opening the cache")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let upstreams: Vec<String> = config.upstreams.iter().map(|u| format!("{}={}", u.name, u.url)).collect();
        tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), upstreams = ?upstreams, "regcache serving");
        regcache::http::serve(listener, registry, shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}
