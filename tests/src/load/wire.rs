//! The load generator's HTTP/1.1 client: each request signed and encoded into one buffer
//! and written with one call on a keep-alive connection; each answer's status line and
//! headers parsed in place, its body skipped.
//!
//! Why not hyper's client: on the benchmark's 2 cores, the load generator competes with
//! ingest and the broker for CPU, so every microsecond it spends per request is taken
//! from what it measures; hyper's client spends a connection task, a channel and a
//! request object per send. A benchmark client should be the cheapest part of the run,
//! as wrk and h2load are (the measured difference: `tests/README.md`, "Benchmarks").

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::workload::Planned;
use crate::sign::sign;

/// How requests are signed.
#[derive(Debug, Clone)]
pub struct Signer {
    /// The source's name: requests go to `POST /webhooks/<source>`.
    pub source: String,
    /// Its signature scheme (`hmac-sha256`, `standard-webhooks`, `stripe`, `github`).
    pub scheme: String,
    /// Its secret.
    pub secret: String,
}

/// Encode one signed `POST /webhooks/<source>` request, whole, with signed timestamp `ts`
/// (unix seconds).
pub fn encode(host: &str, signer: &Signer, p: &Planned, ts: i64) -> Bytes {
    let mut head = format!(
        "POST /webhooks/{} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        signer.source,
        p.body.len()
    );
    for (k, v) in sign(&signer.scheme, &signer.secret, &p.event_id, ts, &p.body) {
        head.push_str(&k);
        head.push_str(": ");
        head.push_str(&v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = BytesMut::with_capacity(head.len() + p.body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&p.body);
    out.freeze()
}

/// Why an exchange failed; the connection is dropped and a new one opened.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection before answering")]
    Closed,
    #[error("unparseable answer: {0}")]
    Parse(#[from] httparse::Error),
    #[error("answer without content-length (chunked answers are not supported)")]
    NoLength,
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The server said `connection: close`; the next exchange needs a new connection.
    closing: bool,
}

impl Conn {
    /// Connect to `addr` (`host:port`), with Nagle off so small requests go at once.
    pub async fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(4096),
            closing: false,
        })
    }

    /// Whether the server asked to close this connection.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Write one encoded request and read its answer; returns the status code.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<u16, WireError> {
        self.stream.write_all(request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close") {
                        self.closing = true;
                    }
                }
                let total = head_len + length.ok_or(WireError::NoLength)?;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                self.buf.advance(total);
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), WireError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(WireError::Closed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads one request head and answers with `answer`, twice on one
    /// connection, the second answer split in two writes.
    async fn serve(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 65536];
            for round in 0..2 {
                let _ = s.read(&mut buf).await;
                if round == 0 {
                    let _ = s.write_all(answer).await;
                } else {
                    let (a, b) = answer.split_at(answer.len() / 2);
                    let _ = s.write_all(a).await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    let _ = s.write_all(b).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_status_and_skips_the_body_across_keep_alive_requests() {
        let addr = serve(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\n{\"e\":\"no\"}\n").await;
        let mut c = Conn::connect(&addr).await.expect("connect");
        assert_eq!(c.exchange(b"GET / HTTP/1.1\r\n\r\n").await.expect("first"), 503);
        assert_eq!(c.exchange(b"GET / HTTP/1.1\r\n\r\n").await.expect("second"), 503);
        assert!(c.buf.is_empty(), "the body was consumed, nothing left over");
        assert!(!c.closing());
    }

    #[tokio::test]
    async fn notices_connection_close_and_rejects_answers_without_length() {
        let addr = serve(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").await;
        let mut c = Conn::connect(&addr).await.expect("connect");
        assert_eq!(c.exchange(b"GET / HTTP/1.1\r\n\r\n").await.expect("answer"), 200);
        assert!(c.closing());
        let addr = serve(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").await;
        let mut c = Conn::connect(&addr).await.expect("connect");
        assert!(matches!(
            c.exchange(b"GET / HTTP/1.1\r\n\r\n").await,
            Err(WireError::NoLength)
        ));
    }

    #[test]
    fn encodes_a_signed_request_with_its_length_and_body() {
        let signer = Signer {
            source: "paymenthub".into(),
            scheme: "hmac-sha256".into(),
            secret: "s".into(),
        };
        let p = Planned {
            event_id: "evt_1".into(),
            payment_id: "pay_1".into(),
            body: b"{\"id\":\"evt_1\"}".to_vec(),
        };
        let req = encode("h:1", &signer, &p, 1_700_000_000);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = parsed.parse(&req).expect("parses") else {
            panic!("incomplete request")
        };
        assert_eq!(parsed.path, Some("/webhooks/paymenthub"));
        assert_eq!(&req[n..], p.body.as_slice());
        let get = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        assert_eq!(get("content-length"), Some(p.body.len().to_string()));
        let expected = sign("hmac-sha256", "s", "evt_1", 1_700_000_000, &p.body);
        for (k, v) in expected {
            assert_eq!(get(&k), Some(v), "header {k}");
        }
    }
}
