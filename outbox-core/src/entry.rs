//! The entry model: [`NewEntry`] is what an application writes, [`Entry`] is what the relay sees.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, ErrorKind};
use crate::status::Status;
use crate::time::Timestamp;

/// The identity of an entry: a UUID, version 7 (time-ordered) when generated here.
///
/// Consumers de-duplicate by it: delivery is at least once.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(u128);

impl EntryId {
    /// A new time-ordered id (UUID v7): 48 bits of Unix milliseconds, then random bits.
    ///
    /// The random bits come from a process-seeded generator, not a cryptographic one;
    /// ids are unique, not secret.
    pub fn generate() -> Self {
        let millis = u128::try_from(Timestamp::now().as_micros() / 1000).unwrap_or(0) & ((1 << 48) - 1);
        let random = ((u128::from(next_random()) << 64) | u128::from(next_random())) & ((1 << 80) - 1);
        // version 7 in bits 76..80, RFC 4122 variant in bits 62..64
        let raw = (millis << 80) | (random & !(0xF << 76) & !(0x3 << 62)) | (0x7 << 76) | (0x2 << 62);
        EntryId(raw)
    }

    /// From the 128-bit value.
    pub const fn from_u128(v: u128) -> Self {
        EntryId(v)
    }

    /// The 128-bit value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// From 16 big-endian bytes (the UUID byte order).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        EntryId(u128::from_be_bytes(bytes))
    }

    /// 16 big-endian bytes (the UUID byte order), as PostgreSQL `uuid` or `BINARY(16)` store it.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({self})")
    }
}

impl FromStr for EntryId {
    type Err = Error;

    /// Parses the hyphenated (`8-4-4-4-12`) or the plain 32-digit hexadecimal form, in either
    /// case. Nothing else is accepted: no sign, no braces, no `urn:uuid:` prefix, no white space.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = s.as_bytes();
        let hyphenated = bytes.len() == 36
            && bytes
                .iter()
                .enumerate()
                .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { *b == b'-' } else { b.is_ascii_hexdigit() });
        let plain = bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit);
        if !hyphenated && !plain {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "{} is not an entry id: expected a UUID of 32 hexadecimal digits, plain or hyphenated 8-4-4-4-12, \
                     such as 0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b17",
                    quote(s)
                ),
            ));
        }
        let mut value: u128 = 0;
        for b in bytes.iter().filter(|b| **b != b'-') {
            // every remaining byte is an ASCII hexadecimal digit: to_digit cannot fail
            let digit = char::from(*b).to_digit(16).unwrap_or(0);
            value = (value << 4) | u128::from(digit);
        }
        Ok(EntryId(value))
    }
}

fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        h.write_i64(Timestamp::now().as_micros());
        h.finish()
    });
    let n = STATE.fetch_add(1, Ordering::Relaxed);
    crate::retry::splitmix64(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// Header names with a meaning the framework and the broker adapters know.
pub mod header {
    /// Correlates every message of one business flow.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The id of the message that caused this one.
    pub const CAUSATION_ID: &str = "causation-id";
    /// W3C trace context; broker adapters forward it (EventBridge's `TraceHeader`, Kafka and AMQP headers).
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, companion of `traceparent`.
    pub const TRACESTATE: &str = "tracestate";
    /// A key consumers can use to de-duplicate at the business level.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// Header names starting with this are reserved for metadata the adapters add
    /// (`outbox-id`, `outbox-sequence`, ...); an entry may not set them.
    pub const RESERVED_PREFIX: &str = "outbox-";
}

/// Ordered string key/value pairs carried with an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// The first value under `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends a pair without validation; the builder validates, stores reading rows back do not need to.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Headers(iter.into_iter().collect())
    }
}

/// An entry's payload: immutable bytes, cheap to clone (shared, never copied per attempt).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(Arc<[u8]>);

impl Payload {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(v.into())
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Self {
        Payload(v.into())
    }
}

impl From<&str> for Payload {
    fn from(v: &str) -> Self {
        Payload(v.as_bytes().into())
    }
}

impl From<String> for Payload {
    fn from(v: String) -> Self {
        Payload::from(v.into_bytes())
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can hold personal data: show the size, not the bytes.
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// Limits the builder enforces. The defaults suit every shipped broker adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest aggregate type, aggregate id or event type, in bytes (default 255).
    pub max_name_len: usize,
    /// Longest content type, in bytes (default 255).
    pub max_content_type_len: usize,
    /// Most headers on one entry (default 64).
    pub max_headers: usize,
    /// Longest header name, in bytes (default 255, AMQP's short-string limit).
    pub max_header_name_len: usize,
    /// Longest header value, in bytes (default 8 KiB).
    pub max_header_value_len: usize,
    /// Largest payload, in bytes (default 1 MiB, 1,048,576).
    ///
    /// This is the outbox's own ceiling, not a broker's: brokers count more than the payload
    /// and have their own limits (Kafka's producer default `message.max.bytes` is 1,000,000
    /// bytes for key, value and headers together; EventBridge takes less than 256 KiB per
    /// entry). Each broker adapter checks every entry against its broker's limit before sending
    /// and fails the ones that can never fit, permanently; its crate docs give the limit.
    pub max_payload_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: 255,
            max_content_type_len: 255,
            max_headers: 64,
            max_header_name_len: 255,
            max_header_value_len: 8 * 1024,
            max_payload_len: 1024 * 1024,
        }
    }
}

/// Which field of an entry failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// [`NewEntry::aggregate_type`].
    AggregateType,
    /// [`NewEntry::aggregate_id`].
    AggregateId,
    /// [`NewEntry::event_type`].
    EventType,
    /// [`NewEntry::content_type`].
    ContentType,
    /// [`NewEntry::payload`].
    Payload,
    /// The header list as a whole (too many).
    Headers,
    /// The name of the header at this position.
    HeaderName(usize),
    /// The value of the header with this name.
    HeaderValue(String),
    /// [`NewEntry::not_before`].
    NotBefore,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::AggregateType => f.write_str("aggregate_type"),
            Field::AggregateId => f.write_str("aggregate_id"),
            Field::EventType => f.write_str("event_type"),
            Field::ContentType => f.write_str("content_type"),
            Field::Payload => f.write_str("payload"),
            Field::Headers => f.write_str("headers"),
            Field::HeaderName(i) => write!(f, "header name #{i}"),
            Field::HeaderValue(name) => write!(f, "value of header `{name}`"),
            Field::NotBefore => f.write_str("not_before"),
        }
    }
}

/// An entry failed validation: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    field: Field,
    reason: String,
}

impl ValidationError {
    fn new(field: Field, reason: impl Into<String>) -> Self {
        ValidationError { field, reason: reason.into() }
    }

    /// The field that failed.
    pub fn field(&self) -> &Field {
        &self.field
    }

    /// Why it failed, and what to do.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid outbox entry: {} {}", self.field, self.reason)
    }
}

impl std::error::Error for ValidationError {}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::new(ErrorKind::Validation, e.to_string())
    }
}

/// What an application writes into the outbox, inside its own transaction.
///
/// Built and validated by [`NewEntry::builder`]; once built it is known to be valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    id: EntryId,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Payload,
    content_type: String,
    headers: Headers,
    not_before: Option<Timestamp>,
}

impl NewEntry {
    /// Starts an entry for the event `event_type` of the aggregate `aggregate_type`/`aggregate_id`.
    ///
    /// ```
    /// use outbox_core::NewEntry;
    /// let entry = NewEntry::builder("order", "o-42", "order.placed")
    ///     .json(r#"{"total":1200}"#)
    ///     .header("correlation-id", "c-7")
    ///     .build()?;
    /// assert_eq!(entry.aggregate_id(), "o-42");
    /// # Ok::<(), outbox_core::ValidationError>(())
    /// ```
    pub fn builder(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
    ) -> NewEntryBuilder {
        NewEntryBuilder {
            id: None,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload: Payload::default(),
            content_type: "application/octet-stream".to_string(),
            headers: Vec::new(),
            not_before: None,
        }
    }

    /// The id: the caller's, or a generated UUID v7.
    pub fn id(&self) -> EntryId {
        self.id
    }
    /// The aggregate's type, e.g. `order`.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The aggregate's id; entries of one aggregate are published in order.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The event type, e.g. `order.placed`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The payload bytes.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// The payload's media type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }
    /// The headers, in order.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// The time before which it must not be published (delayed delivery).
    pub fn not_before(&self) -> Option<Timestamp> {
        self.not_before
    }
}

/// Builds a [`NewEntry`]; [`NewEntryBuilder::build`] validates every field.
#[derive(Clone, Debug)]
pub struct NewEntryBuilder {
    id: Option<EntryId>,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Payload,
    content_type: String,
    headers: Vec<(String, String)>,
    not_before: Option<Timestamp>,
}

impl NewEntryBuilder {
    /// Uses the caller's id instead of generating one (e.g. to make a retried request idempotent).
    pub fn id(mut self, id: EntryId) -> Self {
        self.id = Some(id);
        self
    }

    /// The payload and its media type.
    pub fn payload(mut self, payload: impl Into<Payload>, content_type: impl Into<String>) -> Self {
        self.payload = payload.into();
        self.content_type = content_type.into();
        self
    }

    /// A JSON payload (`application/json`). The text is not parsed here.
    pub fn json(self, json: impl Into<String>) -> Self {
        self.payload(json.into(), "application/json")
    }

    /// Appends a header. Names are HTTP-style tokens; see [`header`] for well-known ones.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets [`header::CORRELATION_ID`].
    pub fn correlation_id(self, value: impl Into<String>) -> Self {
        self.header(header::CORRELATION_ID, value)
    }

    /// Sets [`header::CAUSATION_ID`].
    pub fn causation_id(self, value: impl Into<String>) -> Self {
        self.header(header::CAUSATION_ID, value)
    }

    /// Sets [`header::TRACEPARENT`].
    pub fn traceparent(self, value: impl Into<String>) -> Self {
        self.header(header::TRACEPARENT, value)
    }

    /// Sets [`header::IDEMPOTENCY_KEY`].
    pub fn idempotency_key(self, value: impl Into<String>) -> Self {
        self.header(header::IDEMPOTENCY_KEY, value)
    }

    /// Do not publish before `at` (delayed delivery). Later entries of the same aggregate wait too:
    /// order within an aggregate wins over timeliness.
    ///
    /// `at` must be [storable](Timestamp#the-storable-range) (1970 to the end of 9999), or
    /// [`build`](Self::build) fails; a time in the past means "now".
    pub fn not_before(mut self, at: Timestamp) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Validates with the default [`Limits`].
    pub fn build(self) -> Result<NewEntry, ValidationError> {
        self.build_with(&Limits::default())
    }

    /// Validates with the given limits.
    pub fn build_with(self, limits: &Limits) -> Result<NewEntry, ValidationError> {
        check_name(Field::AggregateType, &self.aggregate_type, limits.max_name_len, "order")?;
        check_name(Field::AggregateId, &self.aggregate_id, limits.max_name_len, "o-42")?;
        check_name(Field::EventType, &self.event_type, limits.max_name_len, "order.placed")?;
        check_name(Field::ContentType, &self.content_type, limits.max_content_type_len, "application/json")?;
        if let Some(at) = self.not_before
            && !at.is_storable()
        {
            return Err(ValidationError::new(
                Field::NotBefore,
                format!(
                    "is {} µs since the Unix epoch, outside the range every store can hold (1970-01-01T00:00:00Z to \
                     9999-12-31T23:59:59.999999Z, Timestamp::MIN_STORABLE..=Timestamp::MAX_STORABLE); give a time \
                     within it",
                    at.as_micros()
                ),
            ));
        }
        if self.payload.len() > limits.max_payload_len {
            return Err(ValidationError::new(
                Field::Payload,
                format!(
                    "is {} bytes, over the limit of {} bytes; store large data elsewhere and send a reference, or raise Limits::max_payload_len (and the broker's own limit)",
                    self.payload.len(),
                    limits.max_payload_len
                ),
            ));
        }
        if self.headers.len() > limits.max_headers {
            return Err(ValidationError::new(
                Field::Headers,
                format!("has {} headers, over the limit of {}", self.headers.len(), limits.max_headers),
            ));
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            check_header(i, name, value, limits)?;
        }
        Ok(NewEntry {
            id: self.id.unwrap_or_else(EntryId::generate),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            payload: self.payload,
            content_type: self.content_type,
            headers: Headers(self.headers),
            not_before: self.not_before,
        })
    }
}

/// How many characters of a rejected value an error message quotes.
const QUOTED_CHARS: usize = 40;

/// A short, safe rendering of a rejected value for an error message: at most [`QUOTED_CHARS`]
/// characters, in quotes, with control, bidi and invisible characters escaped (`\u{202e}`) so
/// the message shows what is there and cannot be reordered or hidden by it.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars().take(QUOTED_CHARS) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c == ' ' || !(c.is_whitespace() || is_forbidden_in_names(c)) => out.push(c),
            c => out.push_str(&c.escape_unicode().to_string()),
        }
    }
    out.push('"');
    if value.chars().nth(QUOTED_CHARS).is_some() {
        out.push_str(&format!("… ({} bytes)", value.len()));
    }
    out
}

/// Bidi control characters (Unicode's `Bidi_Control`): they reorder how text around them is
/// displayed, so a log line or dashboard could show something other than what is stored.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that take no space: two ids that differ only by one look the same.
fn is_zero_width(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// What ids, types and content types may not contain: control characters (C0, DEL, C1), the
/// line and paragraph separators U+2028 and U+2029, bidi controls and zero-width characters.
pub(crate) fn is_forbidden_in_names(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_bidi_control(c) || is_zero_width(c)
}

/// What header values may not contain: the same, except tabs and zero-width characters (a
/// zero-width joiner is part of many emoji).
fn is_forbidden_in_header_values(c: char) -> bool {
    c != '\t' && !is_zero_width(c) && is_forbidden_in_names(c)
}

fn check_name(field: Field, value: &str, max: usize, example: &str) -> Result<(), ValidationError> {
    // Length first, so no later message quotes a huge value.
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes, over the limit of {max}; shorten it (it starts {})", value.len(), quote(value)),
        ));
    }
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, format!("is empty; give a value such as `{example}`")));
    }
    if value.trim() != value {
        return Err(ValidationError::new(
            field,
            format!("{} has leading or trailing white space; trim it", quote(value)),
        ));
    }
    if let Some(c) = value.chars().find(|c| is_forbidden_in_names(*c)) {
        return Err(ValidationError::new(
            field,
            format!(
                "{} contains {}, a control, bidi or zero-width character; remove it",
                quote(value),
                c.escape_unicode()
            ),
        ));
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn check_header(index: usize, name: &str, value: &str, limits: &Limits) -> Result<(), ValidationError> {
    let field = Field::HeaderName(index);
    if name.is_empty() {
        return Err(ValidationError::new(field, "is empty"));
    }
    if name.len() > limits.max_header_name_len {
        return Err(ValidationError::new(
            field,
            format!("{} is {} bytes, over the limit of {}", quote(name), name.len(), limits.max_header_name_len),
        ));
    }
    if !name.chars().all(is_token_char) {
        return Err(ValidationError::new(
            field,
            format!("{} is not a header name: use letters, digits and - . _ (e.g. `correlation-id`)", quote(name)),
        ));
    }
    if name.to_ascii_lowercase().starts_with(header::RESERVED_PREFIX) {
        return Err(ValidationError::new(
            field,
            format!(
                "`{name}` starts with `{}`, which is reserved for the framework's own metadata",
                header::RESERVED_PREFIX
            ),
        ));
    }
    let field = Field::HeaderValue(name.to_string());
    if value.len() > limits.max_header_value_len {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes, over the limit of {}", value.len(), limits.max_header_value_len),
        ));
    }
    if let Some(c) = value.chars().find(|c| is_forbidden_in_header_values(*c)) {
        return Err(ValidationError::new(
            field,
            format!(
                "contains {}, a control or bidi character or a line break (only tabs are allowed); remove it",
                c.escape_unicode()
            ),
        ));
    }
    Ok(())
}

/// A claim on an entry: which relay batch holds it, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder, unique per claimed batch (see [`crate::ClaimRequest::holder`]).
    pub holder: String,
    /// When the claim lapses and the entry becomes claimable again.
    pub expires_at: Timestamp,
}

/// An entry as stored: what the relay claims and hands to a publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The id consumers de-duplicate by.
    pub id: EntryId,
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Position within the aggregate: increases with commit order, may have gaps.
    pub sequence: i64,
    /// The event type.
    pub event_type: String,
    /// The payload bytes.
    pub payload: Payload,
    /// The payload's media type.
    pub content_type: String,
    /// The headers, in order.
    pub headers: Headers,
    /// Where the entry is in its life.
    pub status: Status,
    /// How many publish attempts failed so far.
    pub attempts: u32,
    /// When it was written.
    pub created_at: Timestamp,
    /// When it may be (re)published: its `not_before`, or when the next retry is due.
    pub available_at: Timestamp,
    /// When it was published.
    pub published_at: Option<Timestamp>,
    /// The last publish error.
    pub last_error: Option<String>,
    /// The current claim, while processing.
    pub lease: Option<Lease>,
}

impl Entry {
    /// A pending entry made from what the application wrote, as a store records it.
    pub fn from_new(new: NewEntry, sequence: i64, created_at: Timestamp) -> Self {
        Entry {
            id: new.id,
            available_at: new.not_before.unwrap_or(created_at).max(created_at),
            aggregate_type: new.aggregate_type,
            aggregate_id: new.aggregate_id,
            sequence,
            event_type: new.event_type,
            payload: new.payload,
            content_type: new.content_type,
            headers: new.headers,
            status: Status::Pending,
            attempts: 0,
            created_at,
            published_at: None,
            last_error: None,
            lease: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(b: NewEntryBuilder) -> Field {
        match b.build() {
            Err(e) => e.field().clone(),
            Ok(e) => panic!("expected a validation error, built {e:?}"),
        }
    }

    #[test]
    fn builds_a_valid_entry_with_everything() {
        let id = EntryId::generate();
        let e = NewEntry::builder("order", "o-1", "order.placed")
            .id(id)
            .payload(vec![1, 2, 3], "application/x-protobuf")
            .correlation_id("c")
            .causation_id("d")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .idempotency_key("k")
            .header("x-tenant", "t1")
            .not_before(Timestamp::from_millis(5))
            .build()
            .expect("valid");
        assert_eq!(e.id(), id);
        assert_eq!(e.payload().as_bytes(), &[1, 2, 3]);
        assert_eq!(e.content_type(), "application/x-protobuf");
        let names: Vec<_> = e.headers().iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["correlation-id", "causation-id", "traceparent", "idempotency-key", "x-tenant"]);
        assert_eq!(e.headers().get("x-tenant"), Some("t1"));
        assert_eq!(e.not_before(), Some(Timestamp::from_millis(5)));
    }

    #[test]
    fn rejects_each_bad_field_by_name() {
        assert_eq!(field_of(NewEntry::builder(" ", "1", "e")), Field::AggregateType);
        assert_eq!(field_of(NewEntry::builder("order", "", "e")), Field::AggregateId);
        assert_eq!(field_of(NewEntry::builder("order", " 1", "e")), Field::AggregateId);
        assert_eq!(field_of(NewEntry::builder("order", "1", "a\nb")), Field::EventType);
        assert_eq!(field_of(NewEntry::builder("order", "1", "x".repeat(256))), Field::EventType);
        assert_eq!(field_of(NewEntry::builder("o", "1", "e").payload("x", "")), Field::ContentType);
        assert_eq!(field_of(NewEntry::builder("o", "1", "e").header("bad name", "v")), Field::HeaderName(0));
        assert_eq!(field_of(NewEntry::builder("o", "1", "e").header("Outbox-Id", "v")), Field::HeaderName(0));
        assert_eq!(
            field_of(NewEntry::builder("o", "1", "e").header("a", "ok").header("b", "x\r\ny")),
            Field::HeaderValue("b".into())
        );
        let too_many = (0..65).fold(NewEntry::builder("o", "1", "e"), |b, i| b.header(format!("h{i}"), "v"));
        assert_eq!(field_of(too_many), Field::Headers);
    }

    #[test]
    fn payload_limit_is_configurable() {
        let limits = Limits { max_payload_len: 4, ..Limits::default() };
        let err = NewEntry::builder("o", "1", "e").payload("12345", "text/plain").build_with(&limits).unwrap_err();
        assert_eq!(err.field(), &Field::Payload);
        assert!(err.to_string().contains("5 bytes, over the limit of 4"), "{err}");
        assert!(NewEntry::builder("o", "1", "e").payload("1234", "text/plain").build_with(&limits).is_ok());
    }

    #[test]
    fn generated_ids_are_v7_unique_and_time_ordered() {
        let ids: Vec<EntryId> = (0..1000).map(|_| EntryId::generate()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let s = id.to_string();
            assert_eq!(&s[14..15], "7", "version nibble of {s}");
            assert!("89ab".contains(&s[19..20]), "variant of {s}");
        }
        let first_ms = ids[0].as_u128() >> 80;
        let last_ms = ids[999].as_u128() >> 80;
        assert!(first_ms <= last_ms);
    }

    #[test]
    fn id_text_and_bytes_round_trip() {
        let id = EntryId::generate();
        assert_eq!(id.to_string().parse::<EntryId>().expect("parses"), id);
        assert_eq!(EntryId::from_bytes(id.to_bytes()), id);
        assert_eq!(format!("{:032x}", id.as_u128()).parse::<EntryId>().expect("plain form"), id);
        assert!("not-a-uuid".parse::<EntryId>().is_err());
        assert!("0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4bzz".parse::<EntryId>().is_err());
    }

    #[test]
    fn bidi_and_zero_width_characters_are_rejected_in_ids_and_types() {
        for bad in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200B}', '\u{200D}', '\u{2060}', '\u{FEFF}',
            '\u{2028}', '\u{85}',
        ] {
            let value = format!("o{bad}-1");
            assert_eq!(field_of(NewEntry::builder(value.clone(), "1", "e")), Field::AggregateType, "{bad:?}");
            assert_eq!(field_of(NewEntry::builder("o", value.clone(), "e")), Field::AggregateId, "{bad:?}");
            assert_eq!(field_of(NewEntry::builder("o", "1", value.clone())), Field::EventType, "{bad:?}");
            let err = NewEntry::builder("o", value, "e").build().unwrap_err();
            assert!(!err.to_string().contains(bad), "the message escapes it: {err}");
            assert!(err.to_string().contains(&bad.escape_unicode().to_string()), "{err}");
        }
        assert!(
            NewEntry::builder("commande", "café-ü-42", "commande.passée").build().is_ok(),
            "letters of any script pass"
        );
    }

    #[test]
    fn header_values_reject_line_separators_and_bidi_controls() {
        for bad in ['\u{2028}', '\u{2029}', '\u{202E}', '\u{2067}', '\u{7F}', '\u{9B}', '\n'] {
            let b = NewEntry::builder("o", "1", "e").header("x-note", format!("a{bad}b"));
            assert_eq!(field_of(b), Field::HeaderValue("x-note".into()), "{bad:?}");
        }
        let emoji = "family \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\tok";
        assert!(
            NewEntry::builder("o", "1", "e").header("x-note", emoji).build().is_ok(),
            "zero-width joiners and tabs pass"
        );
    }

    #[test]
    fn errors_quote_at_most_a_short_prefix_and_check_length_first() {
        let huge = format!("{} ", "x".repeat(10 * 1024 * 1024));
        let err = NewEntry::builder("o", huge, "e").build().unwrap_err();
        assert_eq!(err.field(), &Field::AggregateId);
        assert!(err.reason().contains("10485761 bytes, over the limit of 255"), "{err}");
        assert!(err.to_string().len() < 300, "{} bytes of message", err.to_string().len());
        let limits = Limits { max_name_len: usize::MAX, ..Limits::default() };
        let err = NewEntry::builder("o", format!(" {}", "y".repeat(1_000_000)), "e").build_with(&limits).unwrap_err();
        assert!(err.reason().contains("white space"), "{err}");
        assert!(err.to_string().len() < 300, "{} bytes of message", err.to_string().len());
        let err = "+".repeat(1_000_000).parse::<EntryId>().unwrap_err();
        assert!(err.to_string().len() < 400, "{} bytes of message", err.to_string().len());
    }

    #[test]
    fn not_before_must_be_storable() {
        let at = |t: Timestamp| NewEntry::builder("o", "1", "e").not_before(t).build();
        for bad in [
            Timestamp::from_micros(i64::MAX),
            Timestamp::from_micros(Timestamp::MAX_STORABLE.as_micros() + 1),
            Timestamp::from_micros(-1),
            Timestamp::from_micros(i64::MIN),
        ] {
            let err = at(bad).unwrap_err();
            assert_eq!(err.field(), &Field::NotBefore, "{bad:?}");
            assert!(err.reason().contains("9999-12-31T23:59:59.999999Z"), "{err}");
        }
        assert_eq!(at(Timestamp::MAX_STORABLE).unwrap().not_before(), Some(Timestamp::MAX_STORABLE));
        assert!(at(Timestamp::MIN_STORABLE).is_ok());
    }

    #[test]
    fn only_canonical_id_text_parses() {
        let id: EntryId = "0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b17".parse().unwrap();
        assert_eq!(id.as_u128(), 0x0190f0e2_7c4a_7b3e_8d21_5f2a9c0e4b17);
        assert_eq!("0190F0E2-7C4A-7B3E-8D21-5F2A9C0E4B17".parse::<EntryId>().unwrap(), id, "either case");
        assert_eq!("0190f0e27c4a7b3e8d215f2a9c0e4b17".parse::<EntryId>().unwrap(), id);
        for bad in [
            "+190f0e27c4a7b3e8d215f2a9c0e4b17",
            "+190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b17",
            "0190f0e2-7c4a-7b3e-8d21-+f2a9c0e4b17",
            "-190f0e27c4a7b3e8d215f2a9c0e4b17",
            "{0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b1}",
            "urn:uuid:0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b17",
            " 0190f0e27c4a7b3e8d215f2a9c0e4b1",
            "0190f0e27c4a-7b3e-8d21-5f2a9c0e4b17",
            "0190f0e2-7c4a-7b3e-8d215f2a9c0e4b17",
            "0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b17\u{200B}",
            "0190f0e2\u{2010}7c4a-7b3e-8d21-5f2a9c0e4b",
            "",
        ] {
            let err = bad.parse::<EntryId>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation, "{bad}");
            assert!(err.message().contains("8-4-4-4-12"), "{err}");
        }
    }

    #[test]
    fn payload_debug_hides_content() {
        assert_eq!(format!("{:?}", Payload::from("secret")), "Payload(6 bytes)");
    }

    #[test]
    fn from_new_makes_a_pending_entry_available_at_not_before() {
        let new = NewEntry::builder("o", "1", "e").not_before(Timestamp::from_millis(50)).build().expect("valid");
        let e = Entry::from_new(new, 3, Timestamp::from_millis(10));
        assert_eq!((e.status, e.sequence, e.attempts), (Status::Pending, 3, 0));
        assert_eq!(e.available_at, Timestamp::from_millis(50));
        let past = NewEntry::builder("o", "1", "e").not_before(Timestamp::from_millis(1)).build().expect("valid");
        assert_eq!(Entry::from_new(past, 1, Timestamp::from_millis(10)).available_at, Timestamp::from_millis(10));
    }
}
