//! A real Prometheus (Debian's, installed by `infra/prometheus.sh install`) scraping a
//! live ingest and processor while webhooks flow: every recording rule of
//! `infra/prometheus/rules` and every panel query of `infra/grafana/hookstream.json`
//! returns data, and stopping the processor while webhooks keep coming fires the lag
//! alert. The shipped rule files are loaded as they are, except that every alert's `for:`
//! is shortened to 3 s (the promtool unit tests check the real durations).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hookstream_tests::broker::Broker;
use hookstream_tests::ingest::scheme_of;
use hookstream_tests::processor::{test_config, RunningProcessor, Topics};
use hookstream_tests::{http, ingest, sign};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `HOOKSTREAM_PROMETHEUS_BIN`, else `prometheus` on the PATH.
fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOOKSTREAM_PROMETHEUS_BIN") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .expect("prometheus not found: install it with `infra/prometheus.sh install` (the test command does)")
}

/// A Prometheus server of this test's own, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrape `ingest` and `processor` every second with the shipped rules.
    async fn start(dir: &Path, ingest: &str, processor: &str) -> Prometheus {
        let rules = repo().join("infra/prometheus/rules");
        std::fs::copy(rules.join("recording.yml"), dir.join("recording.yml")).unwrap();
        let alerts = std::fs::read_to_string(rules.join("alerts.yml")).unwrap();
        let shortened: Vec<String> = alerts
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 3s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_owned(),
            })
            .collect();
        std::fs::write(dir.join("alerts.yml"), shortened.join("\n")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [recording.yml, alerts.yml]\n\
             scrape_configs:\n\
             \x20 - job_name: hookstream-ingest\n    static_configs: [{{targets: [\"{ingest}\"]}}]\n\
             \x20 - job_name: hookstream-processor\n    static_configs: [{{targets: [\"{processor}\"]}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr };
        for _ in 0..300 {
            if let Ok(r) = http::try_request(&p.addr, ::http::Method::GET, "/-/ready", &[], Vec::new()).await {
                if r.status == 200 {
                    return p;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "prometheus never became ready:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let r = http::get(&self.addr, &format!("/api/v1/query?query={}", percent_encode(expr))).await;
        let v = r.json();
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Wait up to `timeout` for `expr` to return at least one series.
    async fn wait_for_data(&self, expr: &str, timeout: Duration) -> Result<Vec<Value>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let result = self.query(expr).await;
            if !result.is_empty() {
                return Ok(result);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(expr.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn firing(&self) -> Vec<Value> {
        let v = http::get(&self.addr, "/api/v1/alerts").await.json();
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `record:` name of the shipped recording rules.
fn recording_rules() -> Vec<String> {
    std::fs::read_to_string(repo().join("infra/prometheus/rules/recording.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect()
}

/// Every panel query of the shipped dashboard.
fn panel_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("infra/grafana/hookstream.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_owned())
        .collect()
}

/// A lifecycle (created, processing, completed → an activation) for each of `range`.
async fn lifecycles(addr: &str, range: std::ops::Range<usize>) {
    for i in range {
        for (seq, ty) in [
            (1, "payment.created"),
            (2, "payment.processing"),
            (3, "payment.completed"),
        ] {
            let id = format!("evt_m{i}_{seq}");
            sign::send_event(
                addr,
                &id,
                &format!("pay_m{i}"),
                Some(seq),
                ty,
                Some(&format!("pol_m{i}")),
            )
            .await;
        }
    }
}

/// Traffic of every kind the panels show: activations, a refund (cancellation), a dead
/// letter (a completed payment without a policy), a signature failure.
async fn send_every_kind_of_traffic(addr: &str) {
    lifecycles(addr, 0..20).await;
    sign::send_event(addr, "evt_m0_4", "pay_m0", Some(4), "payment.refunded", Some("pol_m0")).await;
    sign::send_event(addr, "evt_nopol", "pay_nopol", None, "payment.completed", None).await;
    let body = sign::payment_body("evt_forged", "pay_forged", None, "payment.completed", Some("pol_x"));
    let forged = sign::sign(scheme_of("stripe"), "not-the-secret", "evt_forged", sign::now(), &body);
    assert_eq!(http::post(addr, "/webhooks/stripe", &forged, body).await.status, 403);
}

/// 8 × 140 webhooks that nobody processes.
async fn send_a_backlog(addr: &str) {
    let sends = (0..8).map(|w| {
        let addr = addr.to_owned();
        tokio::spawn(async move {
            for i in 0..140 {
                let (id, pay) = (format!("evt_lag_{w}_{i}"), format!("pay_lag_{w}_{i}"));
                sign::send_event(&addr, &id, &pay, Some(1), "payment.created", None).await;
            }
        })
    });
    for s in sends {
        s.await.unwrap();
    }
}

/// Wait (60 s at most) until the consumer-lag alert fires for partition 0, naming its
/// runbook entry.
async fn assert_the_lag_alert_fires(prometheus: &Prometheus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let firing = prometheus.firing().await;
        if let Some(a) = firing
            .iter()
            .find(|a| a["labels"]["alertname"] == "HookstreamConsumerLagHigh")
        {
            assert_eq!(a["labels"]["partition"], "0");
            assert!(a["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .starts_with("infra/RUNBOOK.md#"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag alert did not fire; lag: {:?}; firing: {firing:#?}",
            prometheus.query("hookstream:raw_lag:by_partition").await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_every_rule_and_panel_and_fires_the_lag_alert() {
    let (rules, panels) = (recording_rules(), panel_queries());
    assert!(rules.len() >= 10 && panels.len() >= 14, "{rules:?} {panels:?}");
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let processor = RunningProcessor::start(test_config(broker.bootstrap(), &topics, &dir.path().join("state"))).await;
    let prometheus = Prometheus::start(dir.path(), &ingest.addr(), &processor.admin).await;

    send_every_kind_of_traffic(&ingest.addr()).await;
    let traffic = tokio::spawn({
        let addr = ingest.addr();
        async move { lifecycles(&addr, 20..60).await }
    });

    let mut missing = Vec::new();
    for expr in rules.iter().chain(&panels) {
        if let Err(e) = prometheus.wait_for_data(expr, Duration::from_secs(60)).await {
            missing.push(e);
        }
    }
    assert!(missing.is_empty(), "no data for: {missing:#?}");
    traffic.await.unwrap();
    assert!(
        prometheus.firing().await.is_empty(),
        "no alert on a healthy pipeline: {:#?}",
        prometheus.firing().await
    );

    // The processor stops; webhooks keep coming: the lag alert fires.
    processor.stop().await;
    send_a_backlog(&ingest.addr()).await;
    assert_the_lag_alert_fires(&prometheus).await;
    ingest.stop().await;
}
