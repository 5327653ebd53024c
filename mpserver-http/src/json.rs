//! Parsing a JSON text into a flow's input, telling bad JSON (400) from a
//! wrong type (422).

use axum::http::StatusCode;
use serde::de::{DeserializeOwned, IgnoredAny};

use mpserver::error::ErrorClass;

use crate::error::ErrorResponse;

/// Why a JSON text could not become an input.
pub(crate) enum ParseError {
    /// Not JSON at all (400): bad syntax, or not UTF-8.
    Syntax(String),
    /// JSON, but not of the input type (422).
    Type(serde_json::Error),
}

impl ParseError {
    /// The answer, naming `what` was parsed ("the body", "line 3").
    pub(crate) fn into_api_error(self, what: &str) -> ErrorResponse {
        let status = match self {
            ParseError::Syntax(_) => StatusCode::BAD_REQUEST,
            ParseError::Type(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ErrorResponse {
            status,
            retry_after: None,
            body: Box::new(self.into_body(what)),
            close: false,
        }
    }

    pub(crate) fn into_body(self, what: &str) -> crate::error::ErrorBody {
        match self {
            ParseError::Syntax(e) => crate::error::ErrorBody::new(
                "invalid_json",
                format!("{what} is not valid JSON: {e}"),
            )
            .with_class(ErrorClass::InvalidInput),
            ParseError::Type(e) => crate::error::ErrorBody::new(
                "invalid_input",
                format!("{what} is JSON but not a valid input: {e}"),
            )
            .with_class(ErrorClass::InvalidInput),
        }
    }
}

/// Parses one JSON text into an input, telling bad JSON from a wrong type.
pub(crate) fn parse_json<In: DeserializeOwned>(text: &[u8]) -> Result<In, ParseError> {
    // JSON text is UTF-8 (RFC 8259), also inside strings, which the syntax
    // check below does not look into.
    if let Err(e) = std::str::from_utf8(text) {
        return Err(ParseError::Syntax(format!(
            "invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    // One typed parse; only when it fails, a syntax pass tells bad JSON
    // (`5 garbage` is "not JSON" even for a string input) from a wrong type.
    serde_json::from_slice::<In>(text).map_err(|e| {
        match serde_json::from_slice::<IgnoredAny>(text) {
            Err(syntax) => ParseError::Syntax(syntax.to_string()),
            Ok(_) => ParseError::Type(e),
        }
    })
}
