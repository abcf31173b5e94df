//! The `processor` command: `run` the pipeline's processor, `replay` part of the raw
//! log, or read and re-drive the `dlq`. A thin shell over the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hookstream_processor::cli::{dlq, replay, topics};
use hookstream_processor::ProcessorConfig;
use tokio_util::sync::CancellationToken;

/// hookstream's processor: dedup, per-payment order, policy activation, dead letters.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The TOML configuration (every field has a default; PROCESSOR_* environment
    /// variables override it, see infra/config/processor.toml).
    #[arg(long, global = true, default_value = "infra/config/processor.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume, decide, activate; stop on SIGTERM or ctrl-c (a second signal exits at once).
    Run,
    /// Move the stopped group back so records from there are decided again; prints a
    /// JSON report. Outputs are re-published with the same ids.
    Replay(ReplayArgs),
    /// Dead letters: list, show or re-drive them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Every topic the pipeline uses, with the settings of `[topics]`: print the plan,
    /// check the broker against it, or create what is missing. Prints a JSON report;
    /// fails when a topic is missing (check) or differs from the plan (drift).
    #[command(subcommand)]
    Topics(TopicsCommand),
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// The planned topics and their settings.
    Print,
    /// Compare the broker's topics with the plan; change nothing.
    Check,
    /// Create the missing topics; report drift in the others, change nothing in them.
    Apply,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ReplayFromArgs {
    /// From the start of every partition's retained log.
    #[arg(long)]
    from_beginning: bool,
    /// From these offsets: PARTITION:OFFSET[,PARTITION:OFFSET...]; other partitions stay.
    #[arg(long, value_name = "P:O[,P:O...]")]
    from_offset: Option<String>,
    /// From each partition's first record at or after this RFC 3339 time.
    #[arg(long, value_name = "RFC3339")]
    from_time: Option<String>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    from: ReplayFromArgs,
    /// Also move a partition forward (past its committed offset), skipping records.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct Select {
    /// Only letters with this reason (e.g. no_policy, stale).
    #[arg(long)]
    reason: Option<String>,
    /// Only letters whose original record is at or after this time (UNIX ms or RFC 3339).
    #[arg(long, value_name = "UNIX_MS|RFC3339")]
    since: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// One JSON line per dead letter.
    List(Select),
    /// One dead letter in full, with its original record.
    Show {
        /// The dead letter's id.
        dead_letter_id: String,
    },
    /// Publish the original records back to the raw topic, through dedup again.
    Redrive {
        #[command(flatten)]
        select: Select,
        /// Only this dead letter.
        #[arg(long, value_name = "DEAD_LETTER_ID")]
        id: Option<String>,
        /// Report what would be re-driven without publishing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<ProcessorConfig> {
    let config = ProcessorConfig::load(path).with_context(|| format!("loading {}", path.display()))?;
    // Before any client is made: rdkafka's own error would print the value.
    hookstream_schemas::librdkafka::check_passthrough(&config.kafka.librdkafka)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok(config)
}

async fn replay(config: ProcessorConfig, args: ReplayArgs) -> anyhow::Result<()> {
    let from = match (args.from.from_beginning, args.from.from_offset, args.from.from_time) {
        (true, _, _) => replay::ReplayFrom::Beginning,
        (_, Some(o), _) => replay::ReplayFrom::parse_offsets(&o)?,
        (_, _, Some(t)) => replay::ReplayFrom::parse_time(&t)?,
        _ => anyhow::bail!("give one of --from-beginning, --from-offset, --from-time"),
    };
    let resets = replay::run(&config.kafka, &from, args.force).await?;
    println!(
        "{:#}",
        serde_json::json!({
            "group": config.kafka.group_id, "topic": config.kafka.raw_topic, "partitions": resets,
            "next": "start the processors: each rebuilds a moved partition's state up to reset_to, \
                     then decides the records from there again and re-publishes their outputs with the same ids",
        })
    );
    Ok(())
}

fn filter(select: Select, id: Option<String>) -> anyhow::Result<dlq::Filter> {
    let reason = match select.reason {
        Some(r) => Some(hookstream_schemas::DeadLetterReason::parse(&r).context("unknown reason")?),
        None => None,
    };
    let since_ms = match select.since {
        Some(v) => Some(match v.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => replay::parse_rfc3339_ms(&v).context("--since: UNIX_MS or RFC 3339")?,
        }),
        None => None,
    };
    Ok(dlq::Filter { reason, since_ms, id })
}

async fn topic_command(config: ProcessorConfig, cmd: TopicsCommand) -> anyhow::Result<()> {
    let plan = topics::plan(&config)?;
    let report = match cmd {
        TopicsCommand::Print => {
            println!("{}", serde_json::to_string_pretty(&plan)?);
            return Ok(());
        }
        TopicsCommand::Check => topics::check(&config, &plan).await?,
        TopicsCommand::Apply => topics::apply(&config, &plan).await?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    let bad: Vec<&str> = report
        .iter()
        .filter(|r| matches!(r.status, topics::Status::Missing | topics::Status::Drift))
        .map(|r| r.name.as_str())
        .collect();
    if !bad.is_empty() {
        anyhow::bail!("topics missing or not as planned: {}", bad.join(", "));
    }
    Ok(())
}

async fn dead_letters(config: ProcessorConfig, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List(select) => {
            let entries = dlq::read(&config.kafka, &filter(select, None)?).await?;
            entries.iter().for_each(|e| println!("{}", dlq::summary(e)));
        }
        DlqCommand::Show { dead_letter_id } => {
            let all = Select {
                reason: None,
                since: None,
            };
            let entries = dlq::read(&config.kafka, &filter(all, Some(dead_letter_id))?).await?;
            let e = entries.first().context("no dead letter with that id")?;
            println!("{:#}", dlq::detail(e));
        }
        DlqCommand::Redrive { select, id, dry_run } => {
            let entries = dlq::read(&config.kafka, &filter(select, id)?).await?;
            println!("{:#}", dlq::redrive(&config.kafka, &entries, dry_run).await?);
        }
    }
    Ok(())
}

/// jemalloc, not glibc's malloc: the processor allocates and frees small objects on
/// many threads (a task per partition, rdkafka, sled's copy-on-write nodes), and glibc's
/// malloc took about a quarter of a backlog drain's CPU (tests/README.md, benchmarks).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .init();
    let cli = Cli::parse();
    let config = load(&cli.config)?;
    match cli.command {
        Command::Run => run(config).await,
        Command::Replay(args) => replay(config, args).await,
        Command::Dlq(cmd) => dead_letters(config, cmd).await,
        Command::Topics(cmd) => topic_command(config, cmd).await,
    }
}

async fn run(config: ProcessorConfig) -> anyhow::Result<()> {
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.admin_listen))?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let grace = config.shutdown_grace;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(grace_ms = grace.as_millis() as u64, "signal received, shutting down");
        token.cancel();
        // Handing partitions over needs the broker; without one, librdkafka's commits and
        // close would wait forever. The grace period bounds that on a plain thread (the
        // runtime may be blocked in a close), and a second signal ends it at once.
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::warn!("shutdown grace period over; exiting without waiting further for the broker");
            std::process::exit(1);
        });
        wait_for_signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
    hookstream_processor::run(config, admin, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
