//! Start the processor in-process (admin on port 0, state in a temp dir), or as a real
//! child process (for tests that kill it with SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use hookstream_processor::ProcessorConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The three topics of one test pipeline.
#[derive(Debug, Clone)]
pub struct Topics {
    pub raw: String,
    pub activations: String,
    pub dlq: String,
}

impl Topics {
    /// Create uniquely named raw (`raw_partitions`), activations (3) and DLQ (1) topics.
    pub async fn create(bootstrap: &str, raw_partitions: i32) -> Topics {
        Topics::create_replicated(bootstrap, raw_partitions, 1).await
    }

    /// The same topics with `replication` replicas each (3 on a cluster).
    pub async fn create_replicated(bootstrap: &str, raw_partitions: i32, replication: i32) -> Topics {
        let t = Topics {
            raw: crate::kafka::unique_topic("raw"),
            activations: crate::kafka::unique_topic("activations"),
            dlq: crate::kafka::unique_topic("dlq"),
        };
        crate::kafka::create_replicated_topic(bootstrap, &t.raw, raw_partitions, replication).await;
        crate::kafka::create_replicated_topic(bootstrap, &t.activations, 3, replication).await;
        crate::kafka::create_replicated_topic(bootstrap, &t.dlq, 1, replication).await;
        t
    }
}

/// A processor config for a test: its own group, topics, state dir; short gap timeout.
pub fn test_config(brokers: &str, topics: &Topics, state_dir: &Path) -> ProcessorConfig {
    let mut c = ProcessorConfig::default();
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group_id = crate::kafka::unique_topic("group");
    c.kafka.raw_topic = topics.raw.clone();
    c.kafka.activations_topic = topics.activations.clone();
    c.kafka.dlq_topic = topics.dlq.clone();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.processing.gap_timeout = Duration::from_millis(1500);
    c.processing.gap_check_interval = Duration::from_millis(100);
    c.processing.max_backoff = Duration::from_secs(1);
    c.state_dir = state_dir.to_owned();
    c
}

/// A processor running in this process.
#[derive(Debug)]
pub struct RunningProcessor {
    pub admin: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), hookstream_processor::ProcessorError>>,
}

impl RunningProcessor {
    /// Start with `config` (admin on 127.0.0.1:0). Needs a multi-threaded runtime.
    pub async fn start(config: ProcessorConfig) -> RunningProcessor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = listener.local_addr().expect("addr").to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hookstream_processor::run(config, listener, shutdown.clone()));
        RunningProcessor { admin, shutdown, task }
    }

    /// Graceful stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("processor task")
            .expect("processor exits cleanly");
    }
}

/// Path of a workspace binary, built on first use with the same cargo and profile
/// (`cargo build -p <package> --bin <bin>`).
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    cargo_build(package, "--bin", bin).join(bin)
}

/// Path of a workspace example, built on first use (`cargo build -p <package> --example <name>`).
pub fn workspace_example(package: &str, name: &str) -> PathBuf {
    cargo_build(package, "--example", name).join("examples").join(name)
}

/// Build one target once per test process; returns the profile's output directory.
fn cargo_build(package: &str, kind: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let key = format!("{package} {kind} {name}");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(&key) {
        let status = Command::new(&cargo)
            .args(["build", "-q", "-p", package, kind, name])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {key} failed");
        built.push(key);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug")
}

/// Run the example downstream consumer until it printed `want` events (or 60 s passed);
/// returns the events and how many duplicate deliveries it reported ignoring.
pub fn downstream_example(brokers: &str, topic: &str, args: &[&str], want: usize) -> (Vec<serde_json::Value>, usize) {
    use std::io::{BufRead, BufReader};
    let bin = workspace_example("hookstream-processor", "activations");
    let mut child = std::process::Command::new(bin)
        .args([
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--group",
            &crate::kafka::unique_topic("downstream"),
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the example consumer");
    let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let dups = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("duplicate delivery"))
            .count()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lines.len() < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(serde_json::from_str(&l).expect("a JSON line")),
            Err(_) => break,
        }
    }
    // Anything beyond `want` would show up now.
    std::thread::sleep(std::time::Duration::from_secs(2));
    lines.extend(rx.try_iter().map(|l| serde_json::from_str(&l).expect("a JSON line")));
    let _ = child.kill();
    let _ = child.wait();
    (lines, dups.join().unwrap_or(0))
}

/// The processor binary as a child process with a config file written from `config`.
#[derive(Debug)]
pub struct ChildProcessor {
    child: Child,
    pub admin: String,
    log: PathBuf,
}

/// One instance of a group for a test: `base` with the state in `dir/<name>`, run as a
/// child process with its config and log in `dir/<name>-run`.
pub fn spawn_instance(base: &ProcessorConfig, dir: &Path, name: &str) -> ChildProcessor {
    let mut c = base.clone();
    c.state_dir = dir.join(name);
    let run = dir.join(format!("{name}-run"));
    std::fs::create_dir_all(&run).expect("run directory");
    ChildProcessor::spawn(&c, &run)
}

/// Wait up to `timeout` for `child` to exit; its status, `None` while it still runs.
pub fn wait_exit(child: &mut Child, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl ChildProcessor {
    pub fn spawn(config: &ProcessorConfig, dir: &Path) -> ChildProcessor {
        ChildProcessor::spawn_with_env(config, dir, &[])
    }

    /// [`ChildProcessor::spawn`] with extra environment variables (e.g. a secret's
    /// `PROCESSOR_LIBRDKAFKA_..._FILE`, or `RUST_LOG`).
    pub fn spawn_with_env(config: &ProcessorConfig, dir: &Path, env: &[(&str, &str)]) -> ChildProcessor {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let admin = format!("127.0.0.1:{port}");
        let mut config = config.clone();
        config.admin_listen = admin.parse().expect("admin address");
        let toml = toml::to_string(&config).expect("config serialises");
        let path = dir.join("processor.toml");
        std::fs::write(&path, toml).expect("write config");
        let log_path = dir.join(format!("processor-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(workspace_bin("hookstream-processor", "processor"));
        if !config.kafka.debug.is_empty() {
            // librdkafka's debug lines are logged at target `librdkafka`.
            cmd.env("RUST_LOG", "info,librdkafka=debug");
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("KAFKA_BROKERS")
            .env_remove("PROCESSOR_STATE_DIR")
            .env_remove("PROCESSOR_ADMIN_LISTEN")
            .envs(env.iter().copied())
            .stdout(log.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
            .stderr(log)
            .spawn()
            .expect("spawn processor");
        ChildProcessor {
            child,
            admin,
            log: log_path,
        }
    }

    /// Wait until both of the instance's group members (raw topic, repartition topic)
    /// have their partitions: a stream sent before would be decided only after the join.
    pub async fn wait_assigned(&self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.matches("\"partitions assigned\"").count() >= 2 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not assigned within {timeout:?}:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The last 20,000 bytes of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(20_000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    /// Send `signal` (e.g. `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Wait up to `timeout` for the process to exit; its status, or `None` if it runs on.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// The most memory the process has held resident so far (Linux's `VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcessor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
