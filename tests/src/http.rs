//! A minimal HTTP/1.1 client for tests: one request per connection, real sockets.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// No answer: the step of the exchange that failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    #[error("connect")]
    Connect(#[source] std::io::Error),
    #[error("request")]
    Request(#[source] http::Error),
    #[error("{step}")]
    Hyper {
        step: &'static str,
        #[source]
        source: hyper::Error,
    },
}

fn hyper_step(step: &'static str) -> impl FnOnce(hyper::Error) -> NoAnswer {
    move |source| NoAnswer::Hyper { step, source }
}

/// Send one request to `addr` (`host:port`); panics when there is no answer.
pub async fn request(addr: &str, method: Method, path: &str, headers: &[(String, String)], body: Vec<u8>) -> Reply {
    try_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{addr}{path}: {}", hookstream_schemas::error_chain(&e)))
}

/// [`request`], with no answer (refused, reset) as an error instead of a panic.
pub async fn try_request(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<Reply, NoAnswer> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(NoAnswer::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(hyper_step("handshake"))?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", addr);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(NoAnswer::Request)?;
    let resp = sender.send_request(req).await.map_err(hyper_step("response"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(hyper_step("body"))?;
    Ok(Reply { status, headers, body })
}

/// POST a webhook; no answer is an error.
pub async fn try_post(addr: &str, path: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<Reply, NoAnswer> {
    let mut h = headers.to_vec();
    h.push(("content-type".into(), "application/json".into()));
    try_request(addr, Method::POST, path, &h, body).await
}

/// POST a webhook.
pub async fn post(addr: &str, path: &str, headers: &[(String, String)], body: Vec<u8>) -> Reply {
    let mut h = headers.to_vec();
    h.push(("content-type".into(), "application/json".into()));
    request(addr, Method::POST, path, &h, body).await
}

/// GET a path.
pub async fn get(addr: &str, path: &str) -> Reply {
    request(addr, Method::GET, path, &[], Vec::new()).await
}

/// GET `path` every 100 ms until `ready` holds for the reply; panics with the last
/// reply after 60 s.
pub async fn poll(addr: &str, path: &str, ready: impl Fn(&Reply) -> bool) -> Reply {
    for _ in 0..600 {
        let r = get(addr, path).await;
        if ready(&r) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let last = get(addr, path).await;
    panic!(
        "{path} never became ready: {} {}",
        last.status,
        String::from_utf8_lossy(&last.body)
    );
}
