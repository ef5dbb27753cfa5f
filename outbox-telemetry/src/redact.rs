//! What may appear in a log field: error messages with credentials scrubbed.

use std::borrow::Cow;

/// Words that, as the key of a `key=value` or `key: value` pair, mark the value as secret.
const SECRET_KEYS: [&str; 7] = ["password", "passwd", "secret", "token", "apikey", "api_key", "authorization"];

/// `message` with the password of any `scheme://user:password@host` URL and the value of any
/// `password=…`, `token=…`, `secret: …` (and similar) pair replaced by `***`.
///
/// Adapters already keep secrets out of their messages; this is the second line of defence for
/// what reaches a log field, e.g. a driver error that quotes a connection string.
pub fn scrub(message: &str) -> Cow<'_, str> {
    let lower = message.to_ascii_lowercase();
    let has_url_password = lower.contains("://") && message.contains('@');
    if !has_url_password && !SECRET_KEYS.iter().any(|k| lower.contains(k)) {
        return Cow::Borrowed(message);
    }
    let mut out = scrub_url_passwords(message);
    for key in SECRET_KEYS {
        out = scrub_pairs(&out, key);
    }
    Cow::Owned(out)
}

fn scrub_url_passwords(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or white space.
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn scrub_pairs(message: &str, key: &str) -> String {
    let lower = message.to_ascii_lowercase();
    let mut out = String::with_capacity(message.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(key) {
        let after_key = search + found + key.len();
        let bytes = message.as_bytes();
        let mut value_start = after_key;
        while value_start < bytes.len() && matches!(bytes[value_start], b' ' | b'"' | b'\'') {
            value_start += 1;
        }
        if value_start < bytes.len() && matches!(bytes[value_start], b'=' | b':') {
            value_start += 1;
            while value_start < bytes.len() && matches!(bytes[value_start], b' ' | b'"' | b'\'') {
                value_start += 1;
            }
            // "Authorization: Bearer x": the scheme word is not the secret, what follows is.
            if lower[value_start..].starts_with("bearer ") || lower[value_start..].starts_with("basic ") {
                value_start += 6;
                while value_start < bytes.len() && bytes[value_start] == b' ' {
                    value_start += 1;
                }
            }
            let value_end = message[value_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '\'' | ')' | '}'))
                .map_or(message.len(), |i| value_start + i);
            if value_end > value_start {
                out.push_str(&message[copied..value_start]);
                out.push_str("***");
                copied = value_end;
            }
            search = value_end.max(after_key);
        } else {
            search = after_key;
        }
    }
    out.push_str(&message[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn url_passwords_and_secret_pairs_are_replaced() {
        assert_eq!(
            scrub("cannot connect to amqp://guest:hunter2@127.0.0.1:5672/%2f: refused"),
            "cannot connect to amqp://guest:***@127.0.0.1:5672/%2f: refused"
        );
        assert_eq!(scrub("sasl.password=s3cr3t rejected"), "sasl.password=*** rejected");
        assert_eq!(
            scrub("header Authorization: Bearer abc.def was refused"),
            "header Authorization: Bearer *** was refused"
        );
        assert_eq!(scrub(r#"{"token": "t0k"}"#), r#"{"token": "***"}"#);
        assert_eq!(scrub("postgres://user@host/db and no secret"), "postgres://user@host/db and no secret");
        assert_eq!(scrub("connection refused"), "connection refused");
    }
}
