//! The other side: a small webhook receiver on 127.0.0.1 that checks each call's signature
//! (401 when it does not match) and hands what it accepted to the example, as the partner's
//! service would. It is also the testkit's [`Inbox`]: what reached the "broker".

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use outbox_core::Result;
use outbox_core::testkit::{Inbox, Received};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

use crate::webhook::{SIGNATURE, TIMESTAMP, verify};

/// A call the receiver accepted.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    /// The request's headers, names in lowercase, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Delivery {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The running receiver.
pub(crate) struct Receiver {
    addr: SocketAddr,
    accepted: Mutex<mpsc::UnboundedReceiver<Delivery>>,
}

impl Receiver {
    /// Starts listening on an ephemeral port of 127.0.0.1, verifying with `secret`.
    pub(crate) async fn start(secret: &[u8]) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let secret: Arc<[u8]> = secret.into();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, secret) = (tx.clone(), secret.clone());
                let service = service_fn(move |request| handle(request, secret.clone(), tx.clone()));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Ok(Receiver { addr, accepted: Mutex::new(rx) })
    }

    /// The URL to post to.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/hooks/outbox", self.addr)
    }

    /// Waits until `count` calls were accepted or `timeout` passed; returns those not returned before.
    pub(crate) async fn accepted(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.accepted.lock().await;
        let mut out = Vec::new();
        while out.len() < count {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(d)) => out.push(d),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }
}

async fn handle(
    request: Request<Incoming>,
    secret: Arc<[u8]>,
    accepted: mpsc::UnboundedSender<Delivery>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, format!("could not read the body: {e}"))),
    };
    let delivery = Delivery { headers, body };
    let (id, timestamp, signature) =
        (delivery.header("outbox-id"), delivery.header(TIMESTAMP), delivery.header(SIGNATURE));
    let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
        return Ok(answer(StatusCode::BAD_REQUEST, "missing outbox-id, outbox-timestamp or outbox-signature".into()));
    };
    if !verify(&secret, id, timestamp, &delivery.body, signature) {
        return Ok(answer(StatusCode::UNAUTHORIZED, "signature does not match".into()));
    }
    let _ = accepted.send(delivery);
    Ok(answer(StatusCode::NO_CONTENT, String::new()))
}

fn answer(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

/// What reached the receiver, for the conformance suite.
impl Inbox for Receiver {
    async fn receive(&self, count: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(self
            .accepted(count, timeout)
            .await
            .into_iter()
            .map(|d| Received {
                id: d.header("outbox-id").and_then(|id| id.parse().ok()),
                aggregate_id: d.header("outbox-aggregate-id").map(String::from),
                payload: d.body.clone(),
                headers: d.headers,
            })
            .collect())
    }
}
