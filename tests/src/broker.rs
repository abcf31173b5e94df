//! A local broker (nisshi, tansu's successor) owned by the test process.
//!
//! The broker runs under a tiny `sh` supervisor that waits on its stdin: when the test
//! process exits for any reason (even a panic or a kill), the pipe closes, the
//! supervisor's `read` returns, and it stops the broker. So no test leaves a broker behind,
//! without any unsafe `pre_exec` tricks.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const SUPERVISOR: &str = r#""$0" broker --listener-url "$1" --advertised-listener-url "$1" --storage-engine "$2" >"$3" 2>&1 &
pid=$!
read sig
kill -"${sig:-TERM}" "$pid" 2>/dev/null
wait "$pid" 2>/dev/null"#;

/// Where the broker binary is looked for, in order: `HOOKSTREAM_BROKER_BIN` (any
/// tansu-compatible binary, e.g. tansu 0.6.0 for a comparison), then
/// `$HOOKSTREAM_TOOLS/bin/nisshi`, then `$HOME/.cache/hookstream/tools/bin/nisshi`
/// (where `infra/broker.sh install` puts it).
pub fn broker_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HOOKSTREAM_BROKER_BIN") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("HOOKSTREAM_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hookstream/tools"));
    tools.join("bin/nisshi")
}

/// A running broker: either a spawned child process or an external one from `KAFKA_BROKERS`.
#[derive(Debug)]
pub struct Broker {
    bootstrap: String,
    port: u16,
    storage: Storage,
    proc: Mutex<Option<Supervised>>,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Supervised {
    child: Child,
    stdin: ChildStdin,
}

/// How a spawned broker stores records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In memory: lost when the broker stops.
    Memory,
    /// In a sqlite file in the broker's temporary directory: survives a restart, even after SIGKILL.
    Sqlite,
}

impl Broker {
    /// The broker shared by every test in this test binary: `KAFKA_BROKERS` when set,
    /// else one broker started on first use. Tests isolate themselves with unique topics.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("KAFKA_BROKERS") {
            Ok(b) if !b.trim().is_empty() => Broker {
                bootstrap: b,
                port: 0,
                storage: Storage::Memory,
                proc: Mutex::new(None),
                dir: tempfile::tempdir().expect("tempdir"),
            },
            _ => Broker::spawn(Storage::Memory),
        })
    }

    /// A broker of this test's own, always a spawned broker (tests that stop or restart it).
    pub fn dedicated(storage: Storage) -> Broker {
        Broker::spawn(storage)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn spawn(storage: Storage) -> Broker {
        let bin = broker_path();
        assert!(
            bin.is_file(),
            "broker not found at {}. Integration tests need a real Kafka-protocol broker: \
             install it with `infra/broker.sh install` (or run the README's test command, `infra/test.sh`), \
             or point HOOKSTREAM_BROKER_BIN at a broker binary, or KAFKA_BROKERS at a running broker.",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir for the broker");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            storage,
            proc: Mutex::new(None),
            dir,
        };
        broker.start();
        broker
    }

    /// Start (or restart) the spawned broker and wait until it accepts connections.
    pub fn start(&self) {
        let mut guard = self.proc.lock().unwrap_or_else(|p| p.into_inner());
        assert!(guard.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = match self.storage {
            Storage::Memory => "memory://hookstream/".to_owned(),
            // The broker reads the path relative to its working directory (the broker's dir).
            Storage::Sqlite => "sqlite://broker.db".to_owned(),
        };
        let log = self.log_path();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg(broker_path())
            .arg(&url)
            .arg(&storage)
            .arg(&log)
            .stdin(Stdio::piped())
            .current_dir(self.dir.path())
            .spawn()
            .expect("spawn sh to supervise the broker");
        let stdin = child.stdin.take().expect("piped stdin");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the broker exited ({status}) before listening on {url}; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not listen on {url} within 20 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        *guard = Some(Supervised { child, stdin });
    }

    /// Stop the spawned broker: `graceful` sends SIGTERM, else SIGKILL (a crash).
    /// Returns once the port refuses connections.
    pub fn stop(&self, graceful: bool) {
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
        self.dir.path().join("broker.log")
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop(false);
    }
}
