//! How EventBridge's answers become outcomes: retryable or permanent.
//!
//! | what failed | code / condition | kind | verdict |
//! |---|---|---|---|
//! | one entry (`PutEventsResultEntry.ErrorCode`) | `ThrottlingException`, `Throttling`, `TooManyRequestsException`, `RequestLimitExceeded` | `Throttled` | retryable |
//! | one entry | `InternalFailure`, `InternalException`, `InternalError`, `ServiceUnavailable`, `ServiceUnavailableException`, `RequestTimeout`, `RequestTimeoutException` | `Unavailable` | retryable |
//! | one entry | any other code: `InvalidArgument`, `MalformedDetail`, `AccessDeniedException`, `NotAuthorizedForSourceException`, `NotAuthorizedForDetailTypeException`, `InvalidAccountIdException`, `RedactionFailure`, … | `Rejected` | permanent |
//! | one entry | neither an event id nor an error code | `Unexpected` | retryable (in doubt) |
//! | the response | a different number of result entries than sent | `Unexpected` | retryable for all (in doubt) |
//! | the whole request | a retryable code above, or HTTP 429 / 5xx | `Throttled` / `Unavailable` | retryable for every entry in it |
//! | the whole request | `ExpiredToken(Exception)`, `RequestExpired`, `IDPCommunicationError` (credentials refresh or clock skew) | `Unavailable` | retryable |
//! | the whole request | `AccessDenied(Exception)`, `UnrecognizedClientException`, `InvalidSignatureException`, `MissingAuthenticationToken`, `NotAuthorized…` | `Rejected` | permanent for every entry in it |
//! | the whole request | `ValidationException`, `InvalidArgument`, `SerializationException`, `ResourceNotFoundException` (no such bus), other 4xx | `Rejected` | permanent for every entry in it |
//! | the whole request | no response: connection refused or reset, DNS, I/O | `Unavailable` | retryable |
//! | the whole request | timed out | `Timeout` | retryable |
//! | the whole request | a response that could not be read | `Unexpected` | retryable (in doubt) |
//! | the whole request | it could not be built or signed (no region, no credentials, endpoint resolution) | `Config` | retryable: a configuration fix must not cost the entries |
//!
//! **Outages.** `Throttled` and `Unavailable` failures, and every *retryable* failure of a whole
//! request (timeout, unreadable response, a request that could not be built), are outages
//! ([`Error::is_outage`]): they say nothing about the entries, so the relay releases them
//! without counting an attempt and pauses until EventBridge answers. Permanent refusals and
//! per-entry rejections count attempts.
//!
//! The SDK itself already retries a failed request (standard retry mode, 3 attempts by default)
//! before the adapter sees the error; per-entry failures inside a successful response are never
//! retried by the SDK, only by the relay.

use aws_sdk_eventbridge::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_eventbridge::operation::put_events::PutEventsError;
use aws_sdk_eventbridge::types::PutEventsResultEntry;
use outbox_core::{Error, ErrorKind, Outcome};

fn throttling(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "RequestThrottledException"
    )
}

fn transient(code: &str) -> bool {
    matches!(
        code,
        "InternalFailure"
            | "InternalException"
            | "InternalError"
            | "InternalServerError"
            | "InternalServiceError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "RequestTimeout"
            | "RequestTimeoutException"
    )
}

fn credentials_refresh(code: &str) -> bool {
    matches!(code, "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" | "IDPCommunicationError")
}

/// The kind and verdict of an EventBridge error code (per entry or for a whole request).
pub fn code_kind(code: &str) -> (ErrorKind, bool) {
    if throttling(code) {
        (ErrorKind::Throttled, true)
    } else if transient(code) || credentials_refresh(code) {
        (ErrorKind::Unavailable, true)
    } else {
        (ErrorKind::Rejected, false)
    }
}

/// The outcome of one entry from its `PutEventsResultEntry` (matched by index with the request).
pub fn result_entry(entry: &PutEventsResultEntry) -> Outcome {
    match (entry.error_code(), entry.event_id()) {
        (None, Some(_)) => Outcome::Published,
        (Some(code), _) => {
            let (kind, retryable) = code_kind(code);
            let message = entry.error_message().unwrap_or("no message");
            let advice = if retryable {
                "it will be retried"
            } else {
                "EventBridge refuses this entry for good; fix the entry, the configuration or the permissions"
            };
            Outcome::Failed(
                Error::new(kind, format!("EventBridge rejected the entry: {code}: {message}; {advice}"))
                    .with_retryable(retryable),
            )
        }
        (None, None) => Outcome::Failed(
            Error::new(
                ErrorKind::Unexpected,
                "EventBridge returned a result entry with neither an event id nor an error code; it will be retried",
            )
            .with_retryable(true),
        ),
    }
}

/// The error every entry of a `PutEvents` request gets when the request as a whole failed. A
/// retryable one is an outage: it says nothing about the entries.
pub fn request_failure(error: &SdkError<PutEventsError>) -> Error {
    let error = whole_request_failure(error);
    let outage = error.is_retryable();
    error.with_outage(outage)
}

fn whole_request_failure(error: &SdkError<PutEventsError>) -> Error {
    let detail = DisplayErrorContext(error).to_string();
    match error {
        SdkError::ConstructionFailure(_) => Error::new(
            ErrorKind::Config,
            format!(
                "the PutEvents request could not be built or signed (check the region, credentials and endpoint \
                 of the AWS configuration): {detail}"
            ),
        )
        .with_retryable(true),
        SdkError::TimeoutError(_) => {
            Error::new(ErrorKind::Timeout, format!("the PutEvents request timed out: {detail}"))
        }
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            Error::new(ErrorKind::Timeout, format!("the PutEvents request timed out: {detail}"))
        }
        SdkError::DispatchFailure(_) => Error::new(
            ErrorKind::Unavailable,
            format!("EventBridge could not be reached (is the endpoint right and up?): {detail}"),
        ),
        SdkError::ResponseError(_) => Error::new(
            ErrorKind::Unexpected,
            format!("the PutEvents response could not be read; the entries will be sent again: {detail}"),
        )
        .with_retryable(true),
        SdkError::ServiceError(service) => {
            service_failure(service.err().code(), service.raw().status().as_u16(), &detail)
        }
        _ => Error::new(ErrorKind::Unexpected, format!("the PutEvents request failed: {detail}")).with_retryable(true),
    }
}

/// A whole request refused by the service: by its error code, else by its HTTP status.
pub fn service_failure(code: Option<&str>, status: u16, detail: &str) -> Error {
    let (kind, retryable) = match code {
        Some(code) if throttling(code) || transient(code) || credentials_refresh(code) => code_kind(code),
        _ if status == 429 => (ErrorKind::Throttled, true),
        _ if status >= 500 => (ErrorKind::Unavailable, true),
        _ if (400..500).contains(&status) => (ErrorKind::Rejected, false),
        Some(_) => (ErrorKind::Rejected, false),
        None => (ErrorKind::Unexpected, true),
    };
    let advice = if retryable {
        "the entries will be retried"
    } else {
        "EventBridge refuses this request for good; check the permissions (events:PutEvents on the bus), the bus name \
         and the entries"
    };
    Error::new(
        kind,
        format!(
            "EventBridge refused the PutEvents request (HTTP {status}, {}): {detail}; {advice}",
            code.unwrap_or("no code")
        ),
    )
    .with_retryable(retryable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eventbridge::config::http::HttpResponse;
    use aws_sdk_eventbridge::error::{ConnectorError, ErrorMetadata};

    fn failed(code: &str) -> Error {
        let entry = PutEventsResultEntry::builder().error_code(code).error_message("why").build();
        match result_entry(&entry) {
            Outcome::Failed(e) => e,
            Outcome::Published => panic!("{code} counted as published"),
        }
    }

    #[test]
    fn an_entry_with_an_event_id_and_no_error_is_published() {
        assert!(result_entry(&PutEventsResultEntry::builder().event_id("e-1").build()).is_published());
    }

    #[test]
    fn per_entry_codes_split_into_retryable_and_permanent() {
        for code in ["ThrottlingException", "InternalFailure", "InternalException", "ServiceUnavailable"] {
            assert!(failed(code).is_retryable(), "{code}");
        }
        assert_eq!(failed("ThrottlingException").kind(), ErrorKind::Throttled);
        assert_eq!(failed("InternalFailure").kind(), ErrorKind::Unavailable);
        assert!(failed("ThrottlingException").is_outage() && failed("InternalFailure").is_outage());
        assert!(!failed("InvalidArgument").is_outage());
        for code in [
            "InvalidArgument",
            "MalformedDetail",
            "AccessDeniedException",
            "NotAuthorizedForSourceException",
            "NotAuthorizedForDetailTypeException",
            "InvalidAccountIdException",
            "RedactionFailure",
            "SomethingNew",
        ] {
            let e = failed(code);
            assert!(!e.is_retryable(), "{code}");
            assert_eq!(e.kind(), ErrorKind::Rejected, "{code}");
            assert!(e.message().contains(code) && e.message().contains("why"), "{e}");
        }
    }

    #[test]
    fn an_entry_without_id_or_code_is_retryable_in_doubt() {
        let Outcome::Failed(e) = result_entry(&PutEventsResultEntry::builder().build()) else { panic!("published") };
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Unexpected, true));
    }

    fn service(code: Option<&str>, status: u16) -> Error {
        let mut meta = ErrorMetadata::builder().message("boom");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(status.try_into().unwrap(), "".into());
        request_failure(&SdkError::service_error(PutEventsError::generic(meta.build()), raw))
    }

    #[test]
    fn whole_request_service_errors_by_code_then_status() {
        let cases = [
            (Some("ThrottlingException"), 400, ErrorKind::Throttled, true),
            (None, 429, ErrorKind::Throttled, true),
            (Some("InternalException"), 500, ErrorKind::Unavailable, true),
            (None, 503, ErrorKind::Unavailable, true),
            (Some("SomeServerThing"), 502, ErrorKind::Unavailable, true),
            (Some("ExpiredTokenException"), 400, ErrorKind::Unavailable, true),
            (Some("AccessDeniedException"), 400, ErrorKind::Rejected, false),
            (Some("UnrecognizedClientException"), 403, ErrorKind::Rejected, false),
            (Some("ValidationException"), 400, ErrorKind::Rejected, false),
            (Some("ResourceNotFoundException"), 400, ErrorKind::Rejected, false),
            (None, 403, ErrorKind::Rejected, false),
        ];
        for (code, status, kind, retryable) in cases {
            let e = service(code, status);
            assert_eq!((e.kind(), e.is_retryable()), (kind, retryable), "{code:?} {status}: {e}");
            assert_eq!(e.is_outage(), retryable, "retryable whole-request failures are outages: {e}");
            assert!(e.message().contains(&format!("HTTP {status}")), "{e}");
        }
    }

    #[test]
    fn transport_failures_are_retryable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = request_failure(&SdkError::dispatch_failure(ConnectorError::io(Box::new(io))));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Unavailable, true));
        assert!(e.message().contains("refused"), "{e}");
        let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        let e = request_failure(&SdkError::dispatch_failure(ConnectorError::timeout(Box::new(slow))));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Timeout, true));
        let e = request_failure(&SdkError::timeout_error("deadline"));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Timeout, true));
        assert!(e.is_outage(), "a request that timed out says nothing about its entries: {e}");
        let e = request_failure(&SdkError::construction_failure("no region"));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Config, true));
        assert!(e.message().contains("region"), "{e}");
        let raw = HttpResponse::new(200u16.try_into().unwrap(), "".into());
        let e = request_failure(&SdkError::response_error("truncated body", raw));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Unexpected, true));
    }
}
