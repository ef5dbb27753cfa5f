//! The custom adapter: a [`Publisher`] that POSTs each entry to an HTTP webhook, signed with
//! HMAC-SHA256 so the receiver can check it came from us and was not changed.
//!
//! What makes it a correct outbox publisher (the `Publisher` contract in `outbox_core`):
//! - exactly one [`Outcome`] per entry, in batch order; `Published` only for a 2xx answer;
//! - entries are sent one after the other on one connection, so each aggregate's entries arrive
//!   in sequence order; once an entry fails, the later entries of its aggregate in the batch are
//!   not sent (reported retryable: the relay releases them and sends them again in order);
//! - errors are `outbox_core::Error` with the right kind and verdict: no connection → the whole
//!   batch fails (`Err`, retryable); 5xx, 408, 429, timeouts, a broken connection → retryable;
//!   other 4xx (bad signature, rejected payload) → permanent, for that entry alone;
//! - the secret never appears in `Debug` output or error messages.
//!
//! The request: `POST <url>` with the payload as body and headers `content-type`, `outbox-id`,
//! `outbox-event-type`, `outbox-aggregate-type`, `outbox-aggregate-id`, `outbox-sequence`,
//! `outbox-timestamp` (Unix seconds), `outbox-signature` (`sha256=<hex>` of
//! `HMAC(secret, "<id>.<timestamp>." + body)`), then the entry's own headers. Names starting
//! with `outbox-` are reserved for adapters, so they never clash with the entry's headers.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use outbox_core::{Entry, Error, ErrorKind, Outcome, Publisher, Result};
use sha2::Sha256;
use tokio::net::TcpStream;

/// The header carrying the signature.
pub(crate) const SIGNATURE: &str = "outbox-signature";
/// The header carrying the signing time.
pub(crate) const TIMESTAMP: &str = "outbox-timestamp";

/// Signs `body` for entry `id` at `timestamp`: `sha256=<hex>`.
pub(crate) fn sign(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("sha256={}", hex(&mac(secret, id, timestamp, body).finalize().into_bytes()))
}

/// Checks a `sha256=<hex>` signature in constant time.
pub(crate) fn verify(secret: &[u8], id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(digest) = signature.strip_prefix("sha256=").and_then(unhex) else { return false };
    mac(secret, id, timestamp, body).verify_slice(&digest).is_ok()
}

fn mac(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A configuration mistake, found when the publisher is built.
#[derive(Debug)]
pub(crate) struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid webhook configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Publishes entries as signed webhook calls.
#[derive(Clone)]
pub(crate) struct WebhookPublisher {
    uri: Uri,
    authority: String,
    secret: Vec<u8>,
    timeout: Duration,
}

impl fmt::Debug for WebhookPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("WebhookPublisher")
            .field("uri", &self.uri)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookPublisher {
    /// A publisher posting to `url` (`http://host:port/path`), signing with `secret`. Checked
    /// here, so a bad URL or an empty secret fails at start-up, not at the first batch.
    pub(crate) fn new(url: &str, secret: impl Into<Vec<u8>>, timeout: Duration) -> Result<Self, ConfigError> {
        let uri: Uri = url.parse().map_err(|e| ConfigError(format!("`{url}` is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ConfigError(format!("`{url}`: only http:// is supported by this example (put TLS in front)")));
        }
        let authority = uri.authority().ok_or_else(|| ConfigError(format!("`{url}` has no host")))?;
        let authority = if authority.port().is_some() { authority.to_string() } else { format!("{authority}:80") };
        let secret = secret.into();
        if secret.len() < 16 {
            return Err(ConfigError("the signing secret must be at least 16 bytes".to_string()));
        }
        if timeout.is_zero() {
            return Err(ConfigError("the timeout must be above zero".to_string()));
        }
        Ok(WebhookPublisher { uri, authority, secret, timeout })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let unavailable = |what: String| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach the webhook at {} ({what}); entries stay in the outbox and are retried",
                    self.uri
                ),
            )
        };
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unavailable("connect timed out".to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        // The connection task ends when the sender is dropped or the server closes.
        tokio::spawn(connection);
        Ok(sender)
    }

    fn request(&self, entry: &Entry) -> Result<Request<Full<Bytes>>> {
        let id = entry.id.to_string();
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string();
        let body = entry.payload.as_bytes();
        let mut builder = Request::post(self.uri.clone())
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, &entry.content_type)
            .header("outbox-id", &id)
            .header("outbox-event-type", &entry.event_type)
            .header("outbox-aggregate-type", &entry.aggregate_type)
            .header("outbox-aggregate-id", &entry.aggregate_id)
            .header("outbox-sequence", entry.sequence.to_string())
            .header(TIMESTAMP, &timestamp)
            .header(SIGNATURE, sign(&self.secret, &id, &timestamp, body));
        for (name, value) in entry.headers.iter() {
            builder = builder.header(name, value);
        }
        builder.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| {
            Error::new(
                ErrorKind::Validation,
                format!("entry {id} cannot be sent as an HTTP request ({e}); fix its headers"),
            )
        })
    }

    /// Sends one request on the batch's connection. `Err` means the connection is unusable.
    async fn send(&self, sender: &mut SendRequest<Full<Bytes>>, request: Request<Full<Bytes>>) -> Result<Outcome> {
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            // Read the (small) body to the end, so the connection can carry the next request.
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the webhook at {} did not answer in time", self.uri),
                ));
            }
            Ok(Err(e)) => {
                return Err(Error::new(ErrorKind::Unavailable, format!("the connection to {} broke: {e}", self.uri)));
            }
            Ok(Ok(answer)) => answer,
        };
        Ok(classify(status, &String::from_utf8_lossy(&body)))
    }
}

/// What an HTTP status means for the entry.
fn classify(status: StatusCode, body: &str) -> Outcome {
    if status.is_success() {
        return Outcome::Published;
    }
    let message = format!("the webhook answered {status}: {}", body.chars().take(200).collect::<String>());
    let error = match status {
        StatusCode::TOO_MANY_REQUESTS => Error::new(ErrorKind::Throttled, message),
        StatusCode::REQUEST_TIMEOUT => Error::new(ErrorKind::Timeout, message),
        StatusCode::PAYLOAD_TOO_LARGE => Error::new(ErrorKind::TooLarge, message),
        s if s.is_server_error() => Error::new(ErrorKind::Unavailable, message),
        // Anything else (401 bad signature, 400, 404, 422...): sending it again will not help.
        _ => Error::new(ErrorKind::Rejected, message),
    };
    Outcome::Failed(error)
}

impl Publisher for WebhookPublisher {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // No connection: nothing was sent, the whole batch fails (retryable).
        let mut sender = self.connect().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut failed_aggregates: HashSet<(&str, &str)> = HashSet::new();
        let mut broken: Option<Error> = None;
        for entry in batch {
            let aggregate = (entry.aggregate_type.as_str(), entry.aggregate_id.as_str());
            let outcome = if let Some(e) = &broken {
                Outcome::Failed(Error::new(e.kind(), format!("not sent: {}", e.message())))
            } else if failed_aggregates.contains(&aggregate) {
                Outcome::Failed(Error::new(
                    ErrorKind::Conflict,
                    format!("not sent: an earlier entry of {}/{} failed in this batch", aggregate.0, aggregate.1),
                ))
            } else {
                match self.request(entry) {
                    Err(e) => Outcome::Failed(e),
                    Ok(request) => match self.send(&mut sender, request).await {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            // The answer is unknown: report retryable (at least once) and stop
                            // using the connection for the rest of the batch.
                            broken = Some(Error::new(e.kind(), e.message().to_string()));
                            Outcome::Failed(e)
                        }
                    },
                }
            };
            if !outcome.is_published() {
                failed_aggregates.insert(aggregate);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}
