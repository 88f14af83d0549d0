//! The API's errors. Each variant's doc names its HTTP status. Every error body is JSON
//! `{"error": "..."}`; database and unexpected errors answer 500 with the detail logged, never
//! sent to the client. Every 503 says when to come back (`Retry-After`): it is given only for a
//! condition that passes, and the request had no effect.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::publisher::PublishError;
use crate::domain::InvalidInput;
use crate::paths::PathError;
use crate::store::is_transient;

/// Seconds a client told 503 should wait before retrying: the in-flight bound's answer too.
pub const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 4xx chosen by the request's own fault (bad JSON, bad path, body too large, ...).
    #[error("{message}")]
    Client { status: StatusCode, message: String },
    /// 400: the input parsed but breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// 401: the token of this role (`admin`, `producer`) is missing or wrong.
    #[error("a valid {0} bearer token is required")]
    Unauthorized(&'static str),
    /// 404
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 503: the broker did not take the request; retrying with the same request_id is safe.
    #[error("the request was not accepted: {0}; retry with the same request_id")]
    Unavailable(String),
    /// 503: the broker may hold the request though it did not confirm it: it is `pending` and may
    /// still be decided; retrying with the same request_id is safe.
    #[error(
        "the request may not have been accepted ({0}); it may still be decided: ask GET /orders/{{request_id}} or retry with the same request_id"
    )]
    MaybeDecided(String),
    /// 503 when the database is down, restarting, overloaded or timed out (see
    /// [`crate::store::is_transient`]): nothing was decided, retrying is safe. Else 500, detail
    /// logged only.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// 500, detail logged only.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn client(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) | ApiError::MaybeDecided(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(e) if is_transient(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told; the detail of a database or internal error is logged instead.
    fn public_message(&self) -> String {
        match self {
            ApiError::Database(e) if is_transient(e) => {
                tracing::warn!(error = %e, "request refused: database unavailable or overloaded");
                "the database is unavailable; retry later (with the same request_id)".into()
            }
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error");
                "internal error".into()
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                "internal error".into()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "request refused: dependency unavailable");
                self.to_string()
            }
            _ => self.to_string(),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::NoSuchItem => ApiError::NotFound("item"),
            PathError::Unsupported(message) => ApiError::client(StatusCode::BAD_REQUEST, message),
            PathError::Unavailable(detail) => ApiError::Unavailable(detail),
            PathError::Database(e) => ApiError::Database(e),
            // Settled inside `paths::decide`; reaching here means it gave up on them.
            e @ (PathError::AlreadyDecided | PathError::BuyerInFlight | PathError::Redis(_)) => {
                ApiError::Internal(e.into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(json!({ "error": self.public_message() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(header::RETRY_AFTER, RETRY_AFTER_SECS)], body).into_response();
        }
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_timeouts_are_transient_mistakes_are_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
        assert_eq!(
            ApiError::Database(sqlx::Error::PoolClosed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::Database(sqlx::Error::RowNotFound).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn every_503_says_when_to_retry_and_no_other_answer_does() {
        let retry_after = |e: ApiError| {
            let response = e.into_response();
            let header = response.headers().get(header::RETRY_AFTER).cloned();
            (
                response.status(),
                header.map(|h| h.to_str().unwrap().to_owned()),
            )
        };
        let one = Some(RETRY_AFTER_SECS.to_owned());
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            retry_after(ApiError::Database(sqlx::Error::PoolTimedOut)),
            (unavailable, one.clone())
        );
        assert_eq!(
            retry_after(ApiError::Unavailable("broker".into())),
            (unavailable, one.clone())
        );
        let redis_down = PathError::Unavailable("redis is unavailable".into());
        assert_eq!(retry_after(redis_down.into()), (unavailable, one));
        assert_eq!(
            retry_after(ApiError::Database(sqlx::Error::RowNotFound)),
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        );
        assert_eq!(
            retry_after(ApiError::NotFound("item")),
            (StatusCode::NOT_FOUND, None)
        );
    }
}
