//! Connection URLs and the passwords in them.
//!
//! A URL is checked before any I/O (scheme, host, database name), and every way it can be
//! printed masks the password: [`SecretUrl`]'s `Debug` and `Display`, [`mask`] for error lines,
//! and the errors of this module. The raw text leaves only through [`SecretUrl::expose`], to
//! the drivers.
//!
//! The drivers' own output is the other half: lapin logs every frame it sends at TRACE,
//! including the SASL response that carries the broker password, so `telemetry` caps those
//! targets whatever `RUST_LOG` asks for.

use std::fmt;
use std::str::FromStr;

/// A connection URL that may hold a password. Parsing never fails (clap would echo a refused
/// value, password and all); checking is [`check_database_url`] and [`check_amqp_url`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", mask(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.0))
    }
}

/// The URL with everything between the user name and the last `@` replaced by `***`. Works on
/// text that is not a valid URL too (a mistyped scheme is exactly when it gets printed): the
/// user-info is taken to start after `://` if there is one, else at the start, and the
/// password is whatever follows its first `:`. Without an `@` there is no user-info.
pub fn mask(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = url[..at].find("://").map_or(0, |i| i + 3);
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// A URL refused before any connection was tried.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var} '{masked}': {problem}")]
pub struct UrlError {
    pub var: &'static str,
    pub masked: String,
    pub problem: String,
}

pub(crate) fn refuse(var: &'static str, url: &str, problem: impl Into<String>) -> UrlError {
    UrlError {
        var,
        masked: mask(url),
        problem: problem.into(),
    }
}

/// PostgreSQL's limit on identifiers (NAMEDATALEN - 1).
const MAX_DATABASE_NAME_BYTES: usize = 63;

/// Checks a `DATABASE_URL`: `postgres://` or `postgresql://`, a host (or a `host=` query
/// parameter naming a socket directory), and one plausible database name. Mistyped URLs parse
/// as something surprising: `postgres:/user:pw@host/db` (one slash) is a URL without a host
/// whose path, `user:pw@host/db`, the driver takes for the database name and `migrate` would
/// create.
pub fn check_database_url(url: &str) -> Result<(), UrlError> {
    const VAR: &str = "DATABASE_URL";
    let parsed = parse(VAR, url, "postgres://")?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(refuse(
            VAR,
            url,
            "must start with postgres:// or postgresql://",
        ));
    }
    let socket_dir = parsed
        .query_pairs()
        .any(|(k, v)| k == "host" && v.starts_with('/'));
    if parsed.host_str().is_none_or(str::is_empty) && !socket_dir {
        return Err(refuse(
            VAR,
            url,
            "names no host (write postgres://user:password@host:port/database, or \
             ?host=/path/to/socket/dir for a Unix socket)",
        ));
    }
    let path = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
    let name = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if name.is_empty() {
        return Err(refuse(VAR, url, "names no database (add /database_name)"));
    }
    if name.contains(['/', '@', ':']) || name.chars().any(char::is_control) {
        return Err(refuse(
            VAR,
            url,
            "the database name holds '/', '@', ':' or a control character: is the URL mistyped?",
        ));
    }
    if name.len() > MAX_DATABASE_NAME_BYTES {
        return Err(refuse(
            VAR,
            url,
            format!("the database name is over {MAX_DATABASE_NAME_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks an `AMQP_URL`: `amqp://` or `amqps://` with a host, and parses it the way lapin
/// will (whose own parse error quotes the whole URL, password included).
pub fn check_amqp_url(url: &str) -> Result<lapin::uri::AMQPUri, UrlError> {
    const VAR: &str = "AMQP_URL";
    let parsed = parse(VAR, url, "amqp://")?;
    if !matches!(parsed.scheme(), "amqp" | "amqps") {
        return Err(refuse(VAR, url, "must start with amqp:// or amqps://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse(
            VAR,
            url,
            "names no host (write amqp://user:password@host:port/vhost)",
        ));
    }
    lapin::uri::AMQPUri::from_str(url)
        .map_err(|_| refuse(VAR, url, "not a valid AMQP URI (see the RabbitMQ URI spec)"))
}

/// `url::Url::parse`, with its one confusing error ("relative URL without a base", i.e. no
/// `scheme:` at all) said plainly.
fn parse(var: &'static str, url: &str, example: &str) -> Result<url::Url, UrlError> {
    url::Url::parse(url).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => refuse(
            var,
            url,
            format!("has no scheme (it must start with {example})"),
        ),
        e => refuse(var, url, e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_hides_the_password_even_in_broken_urls() {
        for (url, masked) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("amqp//user:pw@host", "amqp//user:***@host"),
            (
                "postgres:/user:pw@127.0.0.1:5432/db",
                "postgres:***@127.0.0.1:5432/db",
            ),
            ("user:p@ss:w@rd@host", "user:***@host"),
            ("amqp://127.0.0.1:5672", "amqp://127.0.0.1:5672"),
            ("amqp://user@host", "amqp://user@host"),
            ("amqp:", "amqp:"),
        ] {
            assert_eq!(mask(url), masked, "{url}");
        }
        let s = SecretUrl::new("amqps://u:hunter2@h/v");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "amqps://u:hunter2@h/v");
    }

    #[test]
    fn database_urls_are_checked() {
        for ok in [
            "postgres://postgres@127.0.0.1:5432/signup_worker",
            "postgresql://u:pw@db.example:6543/x?sslmode=require",
            "postgres:///signup?host=/var/run/postgresql",
        ] {
            assert!(check_database_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "postgres:/user:pw@127.0.0.1:5432/db",
            "postgres//user:pw@127.0.0.1:5432/db",
            "mysql://user:pw@127.0.0.1/db",
            "postgres://user:pw@127.0.0.1:5432",
            "postgres://user:pw@127.0.0.1:5432/a/b",
            "postgres:///db",
            "user:pw@127.0.0.1:5432/db",
            "",
        ] {
            let err = check_database_url(bad).expect_err(bad).to_string();
            assert!(!err.contains(":pw@"), "{err}");
            assert!(err.starts_with("invalid DATABASE_URL"), "{err}");
        }
    }

    #[test]
    fn amqp_urls_are_checked() {
        assert!(check_amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(check_amqp_url("amqps://u:p@broker.example/vh?cacertfile=/ca.pem").is_ok());
        for bad in [
            "amqp//user:pw@host",
            "amqp:",
            "user:pw@host",
            "http://user:pw@host",
            "amqp://user:pw@",
            "amqp://user:pw@host:99999",
        ] {
            let err = check_amqp_url(bad).expect_err(bad).to_string();
            assert!(!err.contains(":pw@"), "{err}");
            assert!(err.starts_with("invalid AMQP_URL"), "{err}");
        }
    }
}
