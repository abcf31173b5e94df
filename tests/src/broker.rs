//! A local Apache Kafka owned by the test process: one node, or a cluster of three.
//!
//! Each node is a combined broker + controller in KRaft mode, started from the jars that
//! `infra/broker.sh install` resolves from Maven Central, with the configuration files
//! `infra/broker.sh` uses (`infra/kafka/broker.properties` + `local.properties`), and the
//! same entry points as Kafka's own scripts: `kafka.tools.StorageTool format`, then
//! `kafka.Kafka`.
//!
//! A node runs under a tiny `sh` supervisor that waits on its stdin: when the test
//! process exits for any reason (even a panic or a kill), the pipe closes, the
//! supervisor's `read` returns, and it kills the broker. So no test leaves a broker
//! behind, without any unsafe `pre_exec` tricks.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const SUPERVISOR: &str = r#""$0" "$@" >"$LOG" 2>&1 &
pid=$!
read sig
kill -"${sig:-KILL}" "$pid" 2>/dev/null
wait "$pid" 2>/dev/null"#;

const POM: &str = include_str!("../../infra/kafka/pom.xml");
const BROKER_PROPERTIES: &str = include_str!("../../infra/kafka/broker.properties");
const LOCAL_PROPERTIES: &str = include_str!("../../infra/kafka/local.properties");

/// The pinned Kafka version (`<kafka.version>` in `infra/kafka/pom.xml`).
pub fn kafka_version() -> &'static str {
    POM.split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .expect("infra/kafka/pom.xml names <kafka.version>")
}

/// Where `infra/broker.sh install` puts Kafka's jars: `$HOOKSTREAM_CACHE` (default
/// `$HOME/.cache/hookstream`) + `kafka-<version>/libs`.
pub fn kafka_libs() -> PathBuf {
    let cache = std::env::var_os("HOOKSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hookstream"));
    cache.join(format!("kafka-{}/libs", kafka_version()))
}

fn log4j_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/kafka/log4j2.yaml")
}

/// A running Kafka: nodes this process spawned, or an external cluster from `KAFKA_BROKERS`.
#[derive(Debug)]
pub struct Broker {
    bootstrap: String,
    nodes: Vec<Node>,
    _dir: Option<tempfile::TempDir>,
}

#[derive(Debug)]
struct Node {
    id: usize,
    port: u16,
    dir: PathBuf,
    proc: Mutex<Option<Supervised>>,
}

#[derive(Debug)]
struct Supervised {
    child: Child,
    stdin: ChildStdin,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A random cluster id in Kafka's form (16 bytes, URL-safe base64 without padding).
fn cluster_id() -> String {
    use base64::Engine as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed.to_le_bytes());
    // As Kafka's own `Uuid.randomUuid`: never one that starts with '-', which a command
    // line would read as a flag.
    id.strip_prefix('-').map_or(id.clone(), |rest| format!("A{rest}"))
}

impl Broker {
    /// The broker shared by every test in this test binary: `KAFKA_BROKERS` when set,
    /// else one node started on first use. Tests isolate themselves with unique topics.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("KAFKA_BROKERS") {
            Ok(b) if !b.trim().is_empty() => Broker {
                bootstrap: b,
                nodes: Vec::new(),
                _dir: None,
            },
            _ => Broker::spawn(1),
        })
    }

    /// A single node of this test's own (tests that stop or restart it). Its log is on
    /// disk: what it acknowledged survives a stop, even a SIGKILL.
    pub fn dedicated() -> Broker {
        Broker::spawn(1)
    }

    /// Three nodes of this test's own (replication 3, `min.insync.replicas` 2, as in
    /// production), for the failure tests.
    pub fn cluster() -> Broker {
        Broker::spawn(3)
    }

    /// `host:port,...` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The replication factor topics get on this broker (1 on one node, 3 on a cluster).
    pub fn replication(&self) -> i32 {
        if self.nodes.len() >= 3 {
            3
        } else {
            1
        }
    }

    fn spawn(count: usize) -> Broker {
        let libs = kafka_libs();
        assert!(
            libs.join(".complete").is_file(),
            "Apache Kafka {} not found in {}. Integration tests need a real Kafka broker: \
             install it with `infra/broker.sh install` (or run the README's test command, \
             `infra/test.sh`), or point KAFKA_BROKERS at a running broker.",
            kafka_version(),
            libs.display()
        );
        let dir = tempfile::tempdir().expect("tempdir for the broker");
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let (rf, isr) = if count >= 3 { (3, 2) } else { (1, 1) };
        let cid = cluster_id();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("node{}", i + 1));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let props = format!("{BROKER_PROPERTIES}\n{LOCAL_PROPERTIES}")
                .replace("@NODE_ID@", &(i + 1).to_string())
                .replace("@VOTERS@", &voters)
                .replace("@PORT@", &port.to_string())
                .replace("@CONTROLLER_PORT@", &cport.to_string())
                .replace("@LOG_DIR@", &node_dir.join("data").display().to_string())
                .replace("@REPLICATION@", &rf.to_string())
                .replace("@MIN_ISR@", &isr.to_string());
            std::fs::write(node_dir.join("server.properties"), props).expect("server.properties");
            let node = Node {
                id: i + 1,
                port: *port,
                dir: node_dir,
                proc: Mutex::new(None),
            };
            node.format(&cid);
            nodes.push(node);
        }
        let bootstrap = ports
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let broker = Broker {
            bootstrap,
            nodes,
            _dir: Some(dir),
        };
        // A cluster's controllers elect a leader only once a majority runs: start all first.
        for node in &broker.nodes {
            node.launch();
        }
        for node in &broker.nodes {
            node.wait_listening();
        }
        broker
    }

    /// Start (or restart) every stopped node of this broker and wait until each listens.
    pub fn start(&self) {
        for i in 1..=self.nodes.len() {
            self.start_node(i);
        }
    }

    /// Stop every node: `graceful` sends SIGTERM (a controlled shutdown), else SIGKILL (a crash).
    pub fn stop(&self, graceful: bool) {
        for i in 1..=self.nodes.len() {
            self.stop_node(i, graceful);
        }
    }

    /// Start node `id` (1-based) again, with its log as it was.
    pub fn start_node(&self, id: usize) {
        let node = self.node(id);
        if node.launch() {
            node.wait_listening();
        }
    }

    /// Stop node `id` (1-based); returns once its port refuses connections.
    pub fn stop_node(&self, id: usize, graceful: bool) {
        self.node(id).stop(graceful);
    }

    /// Delete node `id`'s data (it must be stopped) and format it anew with a new cluster
    /// id: the broker of a cluster that lost everything.
    pub fn wipe_node(&self, id: usize) {
        let node = self.node(id);
        assert!(
            node.proc.lock().unwrap_or_else(|p| p.into_inner()).is_none(),
            "stop node {id} first"
        );
        let _ = std::fs::remove_dir_all(node.dir.join("data"));
        node.format(&cluster_id());
    }

    fn node(&self, id: usize) -> &Node {
        self.nodes
            .get(id.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no node {id}: this broker has {} spawned nodes", self.nodes.len()))
    }

    /// The ids of the nodes this broker spawned (1-based).
    pub fn node_ids(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The bootstrap address of node `id` alone.
    pub fn node_address(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.node(id).port)
    }

    /// Every node's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Node {
    fn java(&self) -> Command {
        let mut cmd = Command::new("java");
        // A test node: a smaller heap than infra/broker.sh's 1 GiB, since a test binary
        // may run a shared node, a dedicated one and a cluster at once.
        cmd.args([
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j_config().display()))
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()));
        cmd
    }

    fn format(&self, cluster_id: &str) {
        let out = self
            .java()
            .args([
                "kafka.tools.StorageTool",
                "format",
                &format!("--cluster-id={cluster_id}"),
                "-c",
            ])
            .arg(self.dir.join("server.properties"))
            .output()
            .expect("run java (17+) for kafka.tools.StorageTool");
        assert!(
            out.status.success(),
            "formatting node {} failed: {}{}",
            self.id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Spawn the node unless it runs; true when it was spawned.
    fn launch(&self) -> bool {
        let mut guard = self.proc.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return false;
        }
        let java = self.java();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(SUPERVISOR).arg(java.get_program());
        cmd.args(java.get_args())
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .env("LOG", self.log_path())
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sh to supervise the broker");
        let stdin = child.stdin.take().expect("piped stdin");
        *guard = Some(Supervised { child, stdin });
        true
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            {
                let mut guard = self.proc.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(sup) = guard.as_mut() {
                    if let Ok(Some(status)) = sup.child.try_wait() {
                        panic!(
                            "Kafka node {} exited ({status}) before listening; its log:\n{}",
                            self.id,
                            self.log()
                        );
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "Kafka node {} did not listen on port {} within 60 s; its log:\n{}",
                self.id,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self, graceful: bool) {
        let mut guard = self.proc.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut sup) = guard.take() else { return };
        let sig = if graceful { "TERM\n" } else { "KILL\n" };
        let _ = sup.stdin.write_all(sig.as_bytes());
        let _ = sup.stdin.flush();
        drop(sup.stdin);
        let _ = sup.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        // The end is what explains a failure; a node's whole log is long.
        let start = log.len().saturating_sub(20_000);
        log.get(start..).unwrap_or(&log).to_owned()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop(false);
    }
}
