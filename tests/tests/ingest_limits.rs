//! ingest's memory and time bounds against hostile senders, on a real socket: headers
//! that cannot be valid are refused before the body is read, the bodies being read
//! share a byte budget (beyond it 429 + Retry-After, not memory), and a sender that
//! trickles its body is cut off once it falls below the minimum rate — while signed
//! traffic still gets through.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hookstream_tests::broker::Broker;
use hookstream_tests::http::post;
use hookstream_tests::ingest::{scheme_of, secrets_of, start};
use hookstream_tests::{kafka, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn raw_topic(broker: &Broker) -> String {
    let topic = kafka::unique_topic("limits.raw");
    kafka::create_topic(broker.bootstrap(), &topic, 2).await;
    topic
}

/// A signed request's status through `paymenthub`.
async fn signed_status(addr: &str, id: &str) -> u16 {
    let body = sign::payment_body(id, "pay_l", None, "payment.created", None);
    let h = sign::sign(
        scheme_of("paymenthub"),
        secrets_of("paymenthub")[0],
        id,
        sign::now(),
        &body,
    );
    post(addr, "/webhooks/paymenthub", &h, body).await.status.as_u16()
}

/// Open a request that passes the header checks and declares `len` body bytes, then
/// send `first` of them; the connection stays open.
async fn open_body(addr: &str, len: usize, first: &[u8]) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    send_head(s, len, first).await
}

/// [`open_body`] from another loopback address, `from` (e.g. 127.0.0.2): another peer.
async fn open_body_from(from: Ipv4Addr, addr: &str, len: usize) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let s = socket.connect(addr.parse().unwrap()).await.unwrap();
    send_head(s, len, b"{").await
}

async fn send_head(mut s: TcpStream, len: usize, first: &[u8]) -> TcpStream {
    let head = format!(
        "POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\nx-event-id: e\r\n\
         x-timestamp: {}\r\nx-signature: sha256={}\r\n\r\n",
        sign::now(),
        "0".repeat(64)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    s
}

/// The status line of the answer on `s`, within `wait`.
async fn status_line(s: &mut TcpStream, wait: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_request_is_refused_before_its_body_is_read() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    // Declares 60 KiB and sends none of it: no signature header, so no reason to wait.
    let mut s = TcpStream::connect(ingest.addr().as_str()).await.unwrap();
    s.write_all(b"POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\ncontent-length: 61440\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let line = status_line(&mut s, Duration::from_secs(5)).await;
    assert!(line.starts_with("HTTP/1.1 400"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(1), "answered without the body");
    // A stale timestamp and a signature of the wrong shape are refused the same way.
    for (ts, sig) in [(sign::now() - 3600, "0".repeat(64)), (sign::now(), "zz".to_owned())] {
        let mut s = TcpStream::connect(ingest.addr().as_str()).await.unwrap();
        let head = format!(
            "POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\ncontent-length: 61440\r\nx-event-id: e\r\n\
             x-timestamp: {ts}\r\nx-signature: sha256={sig}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let line = status_line(&mut s, Duration::from_secs(5)).await;
        assert!(
            line.starts_with("HTTP/1.1 403") || line.starts_with("HTTP/1.1 400"),
            "{line}"
        );
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_being_read_share_a_byte_budget_and_signed_traffic_still_gets_through() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    // 400 KiB of budget: two 60 KiB bodies (180 KiB charged each), not three.
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.http.max_buffered_body_bytes = 400 << 10
    })
    .await;
    let addr = ingest.addr();
    let _a = open_body(&addr, 60 << 10, b"{").await;
    let _b = open_body(&addr, 60 << 10, b"{").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = open_body(&addr, 60 << 10, b"{").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("body_budget_exhausted"), "{answer}");
    // A small signed webhook still fits beside the two held bodies.
    assert_eq!(signed_status(&addr, "evt_l1").await, 200);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_declaring_large_bodies_cannot_starve_signed_webhooks() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    // A budget of 16 bodies of 60 KiB (180 KiB each: three copies), at most four of
    // them per peer address.
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.http.max_buffered_body_bytes = (16 * 180) << 10;
        c.http.max_buffered_body_bytes_per_peer = (4 * 180) << 10;
    })
    .await;
    let addr = ingest.addr();
    // 16 such bodies declared from 127.0.0.2, with headers that pass every check
    // possible without the body: the whole budget, to the last KiB, if one address
    // could hold it.
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut flood = Vec::new();
    for _ in 0..16 {
        flood.push(open_body_from(flooder, &addr, 60 << 10).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The signed webhook from 127.0.0.1 fits: the flood holds only its address's share.
    assert_eq!(signed_status(&addr, "evt_share").await, 200);
    let mut refused = 0;
    for s in &mut flood {
        if status_line(s, Duration::from_millis(100))
            .await
            .starts_with("HTTP/1.1 429")
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 12, "four bodies fill the share; the other twelve are 429");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_holding_idle_connections_cannot_shut_others_out() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    // 8 connections in all, 4 per peer address.
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.http.max_connections = 8;
        c.http.max_connections_per_peer = 4;
    })
    .await;
    let addr = ingest.addr();
    // 127.0.0.2 opens 8 connections and sends nothing: without a share they would take
    // every slot, and everyone else would wait in the accept queue.
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut idle = Vec::new();
    for _ in 0..8 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((flooder, 0))).unwrap();
        idle.push(socket.connect(addr.parse().unwrap()).await.unwrap());
    }
    let mut refused = 0;
    for s in &mut idle {
        let line = status_line(s, Duration::from_millis(300)).await;
        if line.starts_with("HTTP/1.1 429") {
            refused += 1;
        }
    }
    assert_eq!(refused, 4, "the flooder's connections beyond its 4 are refused at once");
    let status = tokio::time::timeout(Duration::from_secs(5), signed_status(&addr, "evt_conn"))
        .await
        .expect("answered, not left in the accept queue");
    assert_eq!(status, 200);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_sender_is_cut_off_long_before_the_body_timeout() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.http.body_grace = Duration::from_millis(500);
        c.http.body_read_timeout = Duration::from_secs(15);
    })
    .await;
    let addr = ingest.addr();
    let started = Instant::now();
    let mut s = open_body(&addr, 1000, b"{").await;
    // One byte every 300 ms: far below 64 KiB/s.
    let mut line = String::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(b" ").await.is_err() {
            break;
        }
        line = status_line(&mut s, Duration::from_millis(1)).await;
        if !line.is_empty() {
            break;
        }
    }
    if line.is_empty() {
        line = status_line(&mut s, Duration::from_secs(2)).await;
    }
    assert!(line.starts_with("HTTP/1.1 408"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
    assert_eq!(signed_status(&addr, "evt_l2").await, 200);
    ingest.stop().await;
}
