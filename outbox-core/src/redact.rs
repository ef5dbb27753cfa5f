//! Keeping secrets out of `Debug`, `Display` and error messages.
//!
//! Adapters are configured with connection URLs (`amqp://user:password@host/vhost`) and
//! driver options (`sasl.password`, `sasl.oauthbearer.config`, ...) that hold secrets. Whatever
//! they print (a configuration's `Debug`, a connection error naming the broker) goes through
//! these functions first:
//!
//! - [`redact_url`] replaces the password of a URL, and the values of query parameters whose
//!   name looks secret, with [`REDACTED`], by parsing the URL rather than cutting at the first
//!   `/`: the user information ends at the **last** `@`, so a password holding `/`, `?`, `#` or
//!   `@` is still hidden, and URLs written without `//` (`amqp:guest:secret@host`) are handled
//!   too.
//! - [`is_secret_name`] says whether an option or parameter name looks like it holds a secret
//!   (`password`, `secret`, `token`, `key`, `credential`, `oauth`, ...), tolerating
//!   misspellings such as `sasl.pasword`, so a typo never prints the value it was meant to hide.
//! - [`scrub`] removes the secret parts of a URL from any text, e.g. a driver's error message
//!   that quotes the URL or a piece of it.
//!
//! Redaction errs on the side of hiding: a URL whose query carries an `@` may lose more than its
//! password, and an option named like a secret is hidden even when it is not one.

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// Name fragments that mark a secret when they appear anywhere in a name, after lowercasing it
/// and dropping everything but letters and digits.
const SECRET_STEMS: &[&str] =
    &["pass", "pwd", "secret", "token", "key", "cred", "oauth", "jaas", "auth", "private", "signature"];

/// Words that mark a secret even when misspelled: each is matched with up to this many edits
/// (a letter added, dropped or changed) anywhere in the name.
const SECRET_WORDS: &[(&str, usize)] =
    &[("password", 2), ("passphrase", 2), ("secret", 1), ("token", 1), ("credential", 2), ("bearer", 1)];

/// Whether an option, parameter or field named `name` looks like it holds a secret, so its value
/// must never be shown.
///
/// Case, punctuation and separators are ignored (`sasl.password`, `SASL_PASSWORD` and
/// `saslPassword` are one name), and misspellings of the usual words still count
/// (`sasl.pasword`, `client.secrte`).
///
/// ```
/// use outbox_core::redact::is_secret_name;
/// assert!(is_secret_name("sasl.password"));
/// assert!(is_secret_name("sasl.pasword"));
/// assert!(is_secret_name("sasl.oauthbearer.config"));
/// assert!(is_secret_name("ssl.key.pem"));
/// assert!(!is_secret_name("bootstrap.servers"));
/// assert!(!is_secret_name("sasl.username"));
/// ```
pub fn is_secret_name(name: &str) -> bool {
    let flat: Vec<u8> = name.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_lowercase()).collect();
    let flat_str = String::from_utf8_lossy(&flat);
    SECRET_STEMS.iter().any(|stem| flat_str.contains(stem))
        || SECRET_WORDS.iter().any(|(word, edits)| approximately_contains(&flat, word.as_bytes(), *edits))
}

/// Whether some part of `text` is within `edits` edits (insertions, deletions, substitutions)
/// of `word`: the approximate substring search of Sellers (1980), one row at a time.
fn approximately_contains(text: &[u8], word: &[u8], edits: usize) -> bool {
    // column[i]: the fewest edits turning word[..i] into some text substring ending here.
    let mut column: Vec<usize> = (0..=word.len()).collect();
    if column[word.len()] <= edits {
        return true;
    }
    for &t in text {
        let mut diagonal = column[0]; // a match may start anywhere: row 0 stays 0
        for i in 1..=word.len() {
            let above = column[i];
            let substitute = diagonal + usize::from(word[i - 1] != t);
            column[i] = substitute.min(above + 1).min(column[i - 1] + 1);
            diagonal = above;
        }
        if column[word.len()] <= edits {
            return true;
        }
    }
    false
}

/// The parts of a URL, as far as redaction needs them.
struct UrlParts<'a> {
    /// `amqp:` (with the colon), or empty when there is no scheme.
    scheme: &'a str,
    /// `//` when the URL has an authority introducer.
    slashes: &'a str,
    /// Everything before the last `@`, if there is one.
    userinfo: Option<&'a str>,
    /// Host, port and path: up to the first `?` or `#` after the user information.
    location: &'a str,
    /// From the first `?` or `#` on, including it.
    tail: &'a str,
}

fn parse(url: &str) -> UrlParts<'_> {
    // A scheme is a letter followed by letters, digits, `+`, `-` or `.`, then `:` (and `_`,
    // which RFC 3986 does not allow but librdkafka's `sasl_ssl://` uses).
    let scheme_len = url
        .find(':')
        .filter(|&i| {
            let s = url.as_bytes();
            i > 0
                && s[0].is_ascii_alphabetic()
                && s[..i].iter().all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(b))
        })
        .map_or(0, |i| i + 1);
    let (scheme, rest) = url.split_at(scheme_len);
    let slashes_len = if rest.starts_with("//") { 2 } else { 0 };
    let (slashes, rest) = rest.split_at(slashes_len);
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let tail_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let (location, tail) = rest.split_at(tail_start);
    UrlParts { scheme, slashes, userinfo, location, tail }
}

/// The user name worth keeping from `userinfo`: the text before its first `:`, when the URL has
/// the `scheme://` form and that text looks like a plain name.
fn shown_user<'a>(parts: &UrlParts<'a>) -> Option<&'a str> {
    let (user, _) = parts.userinfo?.split_once(':')?;
    let plain = !parts.slashes.is_empty() && !user.is_empty() && !user.contains(['/', '?', '#', '@']);
    plain.then_some(user)
}

/// `url` with its secrets replaced by [`REDACTED`]: the password (`user:***@host`; the whole
/// user information, `***@host`, when it has no `:` or the URL has no `//`), and the value of
/// every query or fragment parameter whose name [looks secret](is_secret_name).
///
/// ```
/// use outbox_core::redact::redact_url;
/// assert_eq!(redact_url("amqp://guest:S3C/RET@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
/// assert_eq!(redact_url("amqp:guest:S3CRET@host"), "amqp:***@host");
/// assert_eq!(redact_url("https://h/x?token=abc&region=eu"), "https://h/x?token=***&region=eu");
/// assert_eq!(redact_url("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
/// ```
pub fn redact_url(url: &str) -> String {
    let parts = parse(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(parts.scheme);
    out.push_str(parts.slashes);
    if parts.userinfo.is_some() {
        if let Some(user) = shown_user(&parts) {
            out.push_str(user);
            out.push(':');
        }
        out.push_str(REDACTED);
        out.push('@');
    }
    out.push_str(parts.location);
    let mut rest = parts.tail;
    while let Some(separator) = rest.chars().next() {
        out.push(separator);
        rest = &rest[separator.len_utf8()..];
        let end = rest.find(['&', ';', '#']).unwrap_or(rest.len());
        let (pair, next) = rest.split_at(end);
        match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
        rest = next;
    }
    out
}

/// The secret pieces of `url` that [`redact_url`] hides: the password (or the whole user
/// information), and secret-looking query values. Empty pieces are left out.
fn secret_parts(url: &str) -> Vec<&str> {
    let parts = parse(url);
    let mut secrets = Vec::new();
    if let Some(userinfo) = parts.userinfo {
        match shown_user(&parts) {
            Some(user) => secrets.push(&userinfo[user.len() + 1..]),
            None => secrets.push(userinfo),
        }
    }
    for pair in parts.tail.split(['?', '&', ';', '#']) {
        if let Some((name, value)) = pair.split_once('=')
            && is_secret_name(name)
        {
            secrets.push(value);
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// `text` with `url` replaced by its [redacted form](redact_url), and every secret piece of
/// `url` (password, secret query values) that still appears replaced by [`REDACTED`]. For
/// driver messages that quote a URL, or part of one.
///
/// ```
/// use outbox_core::redact::scrub;
/// let url = "amqp://guest:S3CRET@host";
/// assert_eq!(scrub("bad port in amqp://guest:S3CRET@host", url), "bad port in amqp://guest:***@host");
/// assert_eq!(scrub("cannot parse `S3CRET@host`", url), "cannot parse `***@host`");
/// ```
pub fn scrub(text: &str, url: &str) -> String {
    let mut text = if url.is_empty() { text.to_string() } else { text.replace(url, &redact_url(url)) };
    let mut secrets = secret_parts(url);
    // Longer pieces first, so a piece containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        text = text.replace(secret, REDACTED);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_ends_at_the_last_at_sign() {
        for (url, redacted) in [
            ("amqp://guest:S3CRET@host:5672/%2f", "amqp://guest:***@host:5672/%2f"),
            ("amqp://guest:S3C/RET@host", "amqp://guest:***@host"),
            ("amqp://guest:S3C?RET@host/v", "amqp://guest:***@host/v"),
            ("amqp://guest:S3C#RET@host/v?heartbeat=5", "amqp://guest:***@host/v?heartbeat=5"),
            ("amqp://guest:S3C@RET@host", "amqp://guest:***@host"),
            ("amqp://guest:S3:CRET@host", "amqp://guest:***@host"),
            ("amqps://guest:@host", "amqps://guest:***@host"),
            ("amqp://S3CRET@host", "amqp://***@host"),
            ("amqp:guest:S3CRET@host", "amqp:***@host"),
            ("amqp:S3CRET@host", "amqp:***@host"),
            ("guest:S3CRET@host", "guest:***@host"),
            ("S3CRET@host", "***@host"),
            ("amqp://host:5672/%2f?heartbeat=5", "amqp://host:5672/%2f?heartbeat=5"),
            ("amqp://", "amqp://"),
            ("", ""),
            (
                "https://h/p?X-Amz-Signature=S3CRET&X-Amz-Credential=AKID&a=1",
                "https://h/p?X-Amz-Signature=***&X-Amz-Credential=***&a=1",
            ),
            ("https://h/p#access_token=S3CRET", "https://h/p#access_token=***"),
            ("sasl_ssl://relay:S3CRET@b1:9092", "sasl_ssl://relay:***@b1:9092"),
            ("amqp://u:p@h/v?password=S3CRET;auth_mechanism=plain", "amqp://u:***@h/v?password=***;auth_mechanism=***"),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
            assert!(!redact_url(url).contains("S3CRET"), "{url}");
        }
    }

    #[test]
    fn scrub_removes_every_secret_piece() {
        let url = "amqp://guest:S3C/RET@host/v?token=T0KEN";
        let text = format!("failed: {url}; at `S3C/RET@host`; token T0KEN; user guest");
        let scrubbed = scrub(&text, url);
        for secret in ["S3C/RET", "T0KEN"] {
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        assert!(scrubbed.contains("amqp://guest:***@host/v?token=***"), "{scrubbed}");
        assert!(scrubbed.contains("user guest"), "{scrubbed}");
        assert_eq!(scrub("nothing here", "amqp://host"), "nothing here");
    }

    #[test]
    fn secret_names_are_found_misspelled_or_not() {
        for name in [
            "sasl.password",
            "sasl.pasword",
            "sasl.passwrd",
            "SASL_PASSWORD",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "ssl_key",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.client.secrte",
            "sasl.jaas.config",
            "api_token",
            "api_tokn",
            "aws_secret_access_key",
            "credentials",
            "credentails",
            "clientSecret",
            "passphrase",
            "pwd",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        // The options every producer sets must stay visible.
        for name in [
            "bootstrap.servers",
            "client.id",
            "acks",
            "enable.idempotence",
            "partitioner",
            "message.timeout.ms",
            "message.max.bytes",
            "linger.ms",
            "compression.type",
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "queue.buffering.max.messages",
            "retries",
            "batch.size",
            "heartbeat",
            "topic.metadata.refresh.interval.ms",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
