//! The HTTP router: health, readiness and metrics here; `POST /webhooks/{source}` goes
//! to the webhook pipeline ([`crate::webhook`]). Every answer that is not 200 is built
//! from a [`Reject`] by [`reject_response`].

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;
use crate::error::Reject;

pub type Resp = Response<Full<Bytes>>;

pub fn json_response(status: u16, body: &serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The answer to a refused request: [`Reject`]'s status and body, with `Retry-After`
/// when the provider should retry and `Allow` on a wrong method.
pub fn reject_response(app: &App, r: &Reject) -> Resp {
    let mut resp = json_response(r.status(), &r.body());
    if r.retry_after() {
        let secs = app.http.retry_after.as_secs().max(1);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(r, Reject::MethodNotAllowed) {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    resp
}

/// Answer one request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json_response(200, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => match app.publisher.ready().await {
            Ok(()) => json_response(200, &json!({ "ready": true, "topic": app.publisher.topic() })),
            Err(detail) => json_response(503, &json!({ "error": "not_ready", "detail": detail })),
        },
        (&Method::GET, "/metrics") => {
            app.metrics.queue_depth.set(i64::from(app.publisher.queue_depth()));
            let mut resp = Response::new(Full::new(Bytes::from(app.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (_, p) if p.starts_with("/webhooks/") => {
            let source = p["/webhooks/".len()..].to_owned();
            crate::webhook::webhook(app, &source, req).await
        }
        _ => reject_response(app, &Reject::NotFound),
    }
}
