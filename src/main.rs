//! The `regcache` command.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use regcache::app::StartError;
use regcache::config::{Config, LogFormat, Overrides};
use regcache::http::App;
use regcache::oci::ImageRef;
use regcache::store::{Store, StoreError};

/// A pull-through caching mirror for container registries.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `regcache gc` evicts down to.
#[derive(Args)]
struct GcArgs {
    /// The size to evict the data directory down to (default: the configured max_size).
    #[arg(long)]
    max_size: Option<String>,
    /// With `[storage] backend = "s3"`: the size to evict the bucket's blobs down to (default:
    /// the configured bucket_max_size). Blobs any node used within `--protect-recent` stay.
    #[arg(long)]
    bucket_max_size: Option<String>,
    /// With `[storage] backend = "s3"`: keep blobs any node used within this long (default
    /// 10m, as the nodes' own eviction; `0s` evicts by age alone).
    #[arg(long, default_value = "10m")]
    protect_recent: String,
    /// List what would be evicted without evicting it.
    #[arg(long)]
    dry_run: bool,
}

/// Where the configuration comes from; shared by every command.
#[derive(Args, Clone)]
struct Common {
    /// Configuration file (TOML). Without one, regcache mirrors Docker Hub.
    #[arg(long, env = "REGCACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (default ./regcache-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mirror.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (default 127.0.0.1:5000).
        #[arg(long)]
        listen: Option<String>,
        /// URL of the (first) upstream registry.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// List cached repositories and tags, when each was last revalidated, and sizes (and what the
    /// shared bucket holds, with `backend = "s3"`).
    Ls {
        #[command(flatten)]
        common: Common,
        /// Only this repository (`alpine`, `library/alpine`, `ghcr.io/org/app`).
        repo: Option<String>,
    },
    /// Evict least-recently-used content now, down to a size.
    Gc {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: GcArgs,
    },
    /// Re-hash every stored blob and manifest; corrupt ones are moved to quarantine/ (in the
    /// bucket, with `backend = "s3"`: deleted). Exit code 1 if any.
    Verify {
        #[command(flatten)]
        common: Common,
    },
    /// Fetch images into the cache ahead of time (`alpine:3`, `ghcr.io/org/app@sha256:…`).
    Warm {
        #[command(flatten)]
        common: Common,
        /// Only this platform (`linux/amd64`); default: all.
        #[arg(long)]
        platform: Option<String>,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Exit 0 when the server's /healthz answers 200 within 3 s, else 1 with one line saying why
    /// (for Docker's HEALTHCHECK in images without curl). The URL comes from the configuration:
    /// admin_listen if set, else listen (https with [tls], trusting exactly [tls] cert).
    Healthcheck {
        /// Configuration file (TOML) of the server to check.
        #[arg(long, env = "REGCACHE_CONFIG")]
        config: Option<PathBuf>,
        /// Check this URL instead (`http://127.0.0.1:9090`: /healthz there).
        #[arg(long)]
        url: Option<String>,
    },
    /// Validate a configuration and print the effective settings (secrets masked).
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("regcache: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("regcache: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// How a command failed: bad configuration or input (exit 2), or at run time (exit 1).
enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        if e.is_config() {
            Failure::Usage(e.to_string())
        } else {
            Failure::Runtime(anyhow::Error::new(e).context("opening the cache"))
        }
    }
}

/// The configuration, and the logs started in its `log_format` (a configuration that can't be
/// read is one line on stderr, written before any log).
fn load(common: &Common, listen: Option<String>, upstream: Option<String>) -> Result<Config, Failure> {
    let overrides = Overrides { listen, data_dir: common.data_dir.clone(), upstream_url: upstream };
    let config = Config::load(common.config.as_deref(), &overrides).map_err(|e| Failure::Usage(e.to_string()))?;
    regcache::logs::init(config.log_format);
    Ok(config)
}

/// Open the data directory for a maintenance command, or say clearly that a server holds it.
fn open_store(config: &Config, command: &str) -> Result<Store, Failure> {
    Store::open(&config.data_dir).map_err(|e: StoreError| {
        if e.is_locked() {
            Failure::Usage(format!(
                "{} is in use by a running regcache server; `regcache {command}` needs it stopped first",
                config.data_dir.display()
            ))
        } else {
            Failure::Runtime(anyhow::Error::new(e).context("opening the cache"))
        }
    })
}

fn run(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Serve { common, listen, upstream } => {
            serve(load(&common, listen, upstream)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls { common, repo } => ls(&load(&common, None, None)?, repo.as_deref()),
        Command::Gc { common, args } => gc(&load(&common, None, None)?, &args),
        Command::Verify { common } => verify(&load(&common, None, None)?),
        Command::Warm { common, platform, images } => {
            let config = load(&common, None, None)?;
            let images = images
                .iter()
                .map(|i| i.parse::<ImageRef>().map_err(|e| Failure::Usage(format!("{i}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let ok = warm(config, &images, platform.as_deref())?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        // Every failure is exit 1, a bad configuration too: Docker's HEALTHCHECK reserves 2.
        Command::Healthcheck { config, url } => {
            regcache::logs::init(LogFormat::Text);
            regcache::healthcheck::run(config.as_deref(), url.as_deref()).context("healthcheck")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            regcache::logs::init(LogFormat::Text);
            check_config(&file)
        }
    }
}

/// `regcache check-config`: the effective settings, secrets masked.
fn check_config(file: &Path) -> Result<ExitCode, Failure> {
    let config = Config::load(Some(file), &Overrides::default()).map_err(|e| Failure::Usage(e.to_string()))?;
    print!("{}", config.describe());
    Ok(ExitCode::SUCCESS)
}

/// `regcache ls`: the data directory, then the bucket.
fn ls(config: &Config, repo: Option<&str>) -> Result<ExitCode, Failure> {
    let mut out = std::io::stdout().lock();
    let store = open_store(config, "ls")?;
    regcache::admin::ls(&store, repo, &mut out).context("listing")?;
    let store = with_bucket(store, config)?;
    block_on(regcache::admin::ls_bucket(&store, repo, &mut out))?.context("listing the bucket")?;
    Ok(ExitCode::SUCCESS)
}

/// `regcache verify`: the data directory, then the bucket; exit code 1 if anything was corrupt.
fn verify(config: &Config) -> Result<ExitCode, Failure> {
    let mut out = std::io::stdout().lock();
    let store = open_store(config, "verify")?;
    let mut clean = regcache::admin::verify(&store, &mut out).context("verifying")?;
    let store = with_bucket(store, config)?;
    clean &= block_on(regcache::admin::verify_bucket(&store, &mut out))?.context("verifying the bucket")?;
    store.index().flush().context("flushing the index")?;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What `regcache gc` evicts down to: the data directory's target, the bucket's, and how recent
/// a use keeps a blob in the bucket.
fn gc_targets(config: &Config, args: &GcArgs) -> Result<(Option<u64>, Option<u64>, Duration), Failure> {
    let size = |s: &str| regcache::config::parse_size(s).map_err(Failure::Usage);
    let target = args.max_size.as_deref().map(size).transpose()?.or(config.max_size);
    let bucket_target = match (config.storage.bucket(), &args.bucket_max_size) {
        (Some(tier), given) => given.as_deref().map(size).transpose()?.or(tier.max_size),
        (None, Some(_)) => return Err(Failure::Usage("--bucket-max-size needs [storage] backend = \"s3\"".into())),
        (None, None) => None,
    };
    let protected = regcache::config::parse_duration(&args.protect_recent)
        .map_err(|e| Failure::Usage(format!("--protect-recent: {e}")))?;
    if target.is_none() && bucket_target.is_none() {
        let more = if config.storage.bucket().is_some() { " (or --bucket-max-size or bucket_max_size)" } else { "" };
        return Err(Failure::Usage(format!("no size to evict down to: pass --max-size or set max_size{more}")));
    }
    Ok((target, bucket_target, protected))
}

/// `regcache gc`: the data directory, then the bucket.
fn gc(config: &Config, args: &GcArgs) -> Result<ExitCode, Failure> {
    let (target, bucket_target, protected) = gc_targets(config, args)?;
    let mut out = std::io::stdout().lock();
    let store = open_store(config, "gc")?;
    match target {
        Some(target) => regcache::admin::gc(&store, target, args.dry_run, &mut out).context("evicting")?,
        None => writeln!(out, "no max_size: the data directory is left as it is").context("writing")?,
    }
    let store = with_bucket(store, config)?;
    if config.storage.bucket().is_some() {
        match bucket_target {
            Some(t) => {
                let node = regcache::app::node_id(config).context("the node id")?;
                let gc = regcache::admin::gc_bucket(&store, &node, t, protected, args.dry_run, &mut out);
                block_on(gc)?.context("evicting from the bucket")?;
            }
            None => writeln!(out, "no bucket_max_size: the bucket is left as it is").context("writing")?,
        }
    }
    store.index().flush().context("flushing the index")?;
    Ok(ExitCode::SUCCESS)
}

/// `regcache serve`: the application built by `regcache::app::start`, served until SIGTERM or
/// SIGINT.
fn serve(config: Config) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let app = regcache::app::start(&config).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let admin = match config.admin_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
                let stopped = stop.clone().cancelled_owned();
                Some(tokio::spawn(regcache::http::serve_admin(l, app.clone(), stopped)))
            }
            None => None,
        };
        tokio::spawn(reload_on_sighup(app.clone()));
        let upstreams: Vec<String> = config.upstreams.iter().map(|u| format!("{}={}", u.name, u.url)).collect();
        tracing::info!(
            listen = %config.listen, tls = config.tls.is_some(), admin_listen = ?config.admin_listen,
            data_dir = %config.data_dir.display(), upstreams = ?upstreams, "regcache serving"
        );
        let signalled = async move {
            shutdown_signal().await;
            stop.cancel();
        };
        regcache::http::serve(listener, app, signalled).await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGHUP: read the TLS certificate and key again; connections keep running.
async fn reload_on_sighup(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match app.tls() {
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reloading the TLS certificate failed; keeping the old one"),
            },
            None => tracing::info!("SIGHUP: nothing to reload (no TLS configured)"),
        }
    }
}

/// `store` with the bucket tier of `[storage]`, if any, for a maintenance command (no probe: its
/// first request says what is wrong).
fn with_bucket(store: Store, config: &Config) -> Result<Store, Failure> {
    regcache::app::with_bucket_tier(store, config).map_err(|e| Failure::Usage(format!("storage: {e}")))
}

/// Run one bucket command's future on a runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    Ok(runtime.block_on(f))
}

/// Warm through the running server if one holds the data directory, else through a temporary
/// one; either way over the local socket in the data directory, which needs neither TLS nor
/// credentials (only the data directory's owner can open it).
fn warm(config: Config, images: &[ImageRef], platform: Option<&str>) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let socket = config.local_socket();
    let warmer = regcache::warm::Warmer::new(&socket);
    runtime.block_on(async {
        match regcache::app::open(&config) {
            Ok(app) => {
                let local = regcache::http::bind_local(&socket)
                    .with_context(|| format!("binding the local socket {}", socket.display()))?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(regcache::http::serve_local(local, app, async {
                    let _ = stopped.await;
                }));
                let ok = warmer.warm_all(images, platform).await;
                let _ = stop.send(());
                server.await.context("stopping the temporary server")?;
                Ok(ok)
            }
            Err(StartError::Store(e)) if e.is_locked() => {
                tracing::info!(socket = %socket.display(), "a server holds the cache; warming through it");
                Ok(warmer.warm_all(images, platform).await)
            }
            Err(e) => Err(anyhow::Error::new(e).context("opening the cache")),
        }
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
