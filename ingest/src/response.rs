//! Building HTTP answers: JSON bodies, and the answer to a refused request (its status,
//! body and headers come from [`Reject`]).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

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
