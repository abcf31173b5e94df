//! The HTTP router: health, readiness and metrics here; `POST /webhooks/{source}` goes
//! to the webhook pipeline ([`crate::webhook`]). Every answer that is not 200 is built
//! from a [`Reject`] by [`reject_response`].

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;
use crate::error::Reject;
use crate::response::{json_response, reject_response, Resp};

/// Answer one request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json_response(200, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => match app.publisher.ready().await {
            Ok(()) => json_response(200, &json!({ "ready": true, "topic": app.publisher.topic() })),
            Err(e) => json_response(
                503,
                &json!({ "error": "not_ready", "detail": hookstream_schemas::error_chain(&e) }),
            ),
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
