//! What an `Internal` error carries: what was being done, and the error that stopped it,
//! kept whole. Flattening the cause into a string at the point of failure lost the causes
//! below it (a registry client's "error sending request" hides its "connection refused" in
//! its own source) and left nothing to inspect; kept, the whole chain reaches the log, the
//! event and the API message through this error's display.

use std::error::Error;
use std::fmt;

/// Any error, kept as it was raised.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

#[derive(Debug)]
pub struct Failure {
    what: String,
    source: Option<BoxError>,
}

impl Failure {
    /// `what` failed because of `source`.
    pub fn new(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Failure {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// A failure with no error beneath it (a broken invariant): `what` says it all.
    pub fn msg(what: impl Into<String>) -> Self {
        Failure {
            what: what.into(),
            source: None,
        }
    }

    /// `source` alone, where it already says what was being done.
    pub fn of(source: impl Into<BoxError>) -> Self {
        Failure::new(String::new(), source)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.what.clone();
        let mut next: Option<&(dyn Error + 'static)> =
            self.source.as_deref().map(|e| e as &(dyn Error + 'static));
        while let Some(cause) = next {
            // Many errors print their cause in their own message as well as returning it as
            // their source: each text once.
            let said = cause.to_string();
            if !said.is_empty() && !text.contains(&said) {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&said);
            }
            next = cause.source();
        }
        f.write_str(&text)
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the layer: {0}")]
    struct SaysItsCause(#[source] std::io::Error);

    fn refused() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")
    }

    #[test]
    fn the_whole_chain_is_shown_and_kept() {
        let f = Failure::new("fetch layer sha256:ab", Outer(refused()));
        assert_eq!(
            f.to_string(),
            "fetch layer sha256:ab: error sending request: connection refused"
        );
        let outer = f.source().expect("kept");
        assert!(outer.downcast_ref::<Outer>().is_some());
        let io = outer.source().expect("kept below");
        assert_eq!(
            io.downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }

    #[test]
    fn a_cause_the_message_already_says_is_said_once() {
        let f = Failure::of(SaysItsCause(refused()));
        assert_eq!(f.to_string(), "cannot read the layer: connection refused");
        assert_eq!(
            Failure::msg("snapshot chain loops").to_string(),
            "snapshot chain loops"
        );
        assert!(Failure::msg("x").source().is_none());
    }
}
