//! Start ingest in-process on port 0 with four sources (one per scheme) whose secrets
//! are in files, against a given broker and topic.

use std::net::SocketAddr;

use hookstream_ingest::config::IngestConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The secrets the test sources use: (source, scheme, secrets). The first source has two
/// secrets (rotation).
pub const SOURCES: [(&str, &str, &[&str]); 4] = [
    ("paymenthub", "hmac-sha256", &["ph-old-secret", "ph-new-secret"]),
    (
        "standard",
        "standard-webhooks",
        &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    ),
    ("stripe", "stripe", &["whsec_stripe_test_secret"]),
    ("github", "github", &["It's a Secret to Everybody"]),
];

/// A running in-process ingest.
#[derive(Debug)]
pub struct RunningIngest {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), hookstream_ingest::IngestError>>,
    _secrets: tempfile::TempDir,
}

impl RunningIngest {
    /// `host:port` to send requests to.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Cancel and wait for a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("ingest task").expect("ingest exits cleanly");
    }
}

/// The test config: the four sources (secrets in files), the given broker and raw topic.
pub fn test_config(brokers: &str, topic: &str, secrets_dir: &std::path::Path) -> IngestConfig {
    let mut text = format!("[kafka]\nbrokers = {brokers:?}\ntopic = {topic:?}\n");
    for (name, scheme, secrets) in SOURCES {
        let path = secrets_dir.join(name);
        std::fs::write(&path, secrets.join("\n")).expect("write secrets file");
        text.push_str(&format!(
            "[sources.{name}]\nscheme = {scheme:?}\nsecrets_file = {:?}\nmax_body_bytes = 65536\n",
            path.display().to_string()
        ));
    }
    IngestConfig::from_toml_str(&text).expect("test config parses")
}

/// Start ingest with `config` (or the test config when `None`) on 127.0.0.1:0.
pub async fn start(brokers: &str, topic: &str, tweak: impl FnOnce(&mut IngestConfig)) -> RunningIngest {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(brokers, topic, dir.path());
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hookstream_ingest::run(config, listener, shutdown.clone()));
    RunningIngest {
        addr,
        shutdown,
        task,
        _secrets: dir,
    }
}

/// The secret list of a test source.
pub fn secrets_of(source: &str) -> &'static [&'static str] {
    SOURCES
        .iter()
        .find(|s| s.0 == source)
        .map(|s| s.2)
        .expect("known test source")
}

/// The scheme of a test source.
pub fn scheme_of(source: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|s| s.0 == source)
        .map(|s| s.1)
        .expect("known test source")
}

/// The ingest binary as a child process: the test config for a broker and topic on a
/// free port (with `tweak` applied), its config file, secrets and log (appended, at
/// `RUST_LOG=debug,rdkafka=info` unless `env` says otherwise) in a directory. Killed
/// when dropped.
#[derive(Debug)]
pub struct ChildIngest {
    child: std::process::Child,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    /// `host:port` it listens on.
    pub addr: String,
    /// Its output.
    pub log: std::path::PathBuf,
}

impl ChildIngest {
    /// Write the config into `dir` and start ingest; it is ready once [`wait_ready`] says so.
    pub fn spawn(
        brokers: &str,
        topic: &str,
        dir: &std::path::Path,
        tweak: impl FnOnce(&mut IngestConfig),
        env: &[(&str, &str)],
    ) -> ChildIngest {
        let mut config = test_config(brokers, topic, dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        tweak(&mut config);
        let path = dir.join("ingest.toml");
        std::fs::write(&path, toml::to_string(&config).expect("config serialises")).expect("write config");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let (addr, log) = (config.listen.to_string(), dir.join("ingest.log"));
        let child = Self::start(&path, &log, &env);
        ChildIngest {
            child,
            config: path,
            env,
            addr,
            log,
        }
    }

    fn start(config: &std::path::Path, log: &std::path::Path, env: &[(String, String)]) -> std::process::Child {
        use std::process::{Command, Stdio};
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("ingest log");
        Command::new(crate::processor::workspace_bin("hookstream-ingest", "ingest"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "debug,rdkafka=info")
            // The config names this test's broker; a KAFKA_BROKERS the tests were given
            // (a shared external cluster) would override it.
            .env_remove("KAFKA_BROKERS")
            .env_remove("INGEST_LISTEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out.try_clone().expect("log handle")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn ingest")
    }

    /// Wait up to `timeout` for the process to exit; its status, `None` while it runs.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        crate::processor::wait_exit(&mut self.child, timeout)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again, same config, same log (after [`ChildIngest::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::start(&self.config, &self.log, &self.env);
    }
}

impl Drop for ChildIngest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until the ingest at `addr` answers `/readyz` with 200 (20 s at most).
pub async fn wait_ready(addr: &str) {
    for _ in 0..200 {
        let probe = crate::http::try_request(addr, http::Method::GET, "/readyz", &[], Vec::new());
        if let Ok(Ok(r)) = tokio::time::timeout(std::time::Duration::from_millis(500), probe).await {
            if r.status == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("ingest at {addr} never became ready");
}
