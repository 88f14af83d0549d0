//! The API's errors. Each variant's doc names its HTTP status. Every error body is JSON
//! `{"error": "..."}`; database and unexpected errors answer 500 with the detail logged, never
//! sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::publisher::PublishError;
use crate::domain::InvalidInput;
use crate::paths::PathError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 4xx chosen by the request's own fault (bad JSON, bad path, body too large, ...).
    #[error("{message}")]
    Client { status: StatusCode, message: String },
    /// 400: the input parsed but breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// 401: the admin token is missing or wrong.
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    /// 404
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 503: the broker did not take the request; retrying with the same request_id is safe.
    #[error("the request was not accepted: {0}; retry with the same request_id")]
    Unavailable(String),
    /// 503 when the database is down, restarting, overloaded or timed out (see
    /// [`is_transient`]): nothing was decided, retrying is safe. Else 500, detail logged only.
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
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(e) if is_transient(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
        let message = match &self {
            ApiError::Database(e) if is_transient(e) => {
                tracing::warn!(error = %e, "request refused: database unavailable or overloaded");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "error": "the database is unavailable; retry later (with the same request_id)"
                    })),
                )
                    .into_response();
            }
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error");
                "internal error".to_string()
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                "internal error".to_string()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "request refused: dependency unavailable");
                self.to_string()
            }
            _ => self.to_string(),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// Whether a database error says "not now" rather than "never": the database is unreachable or
/// restarting, the connection was killed, the pool is exhausted, or a statement ran into
/// `statement_timeout`/`lock_timeout` (set per connection by `store::connect`). The request had
/// no effect (its transaction rolled back), so the client may retry it.
pub fn is_transient(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
        E::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many connections);
            // 57P01-57P03: admin/crash shutdown, cannot connect now; 57014: statement_timeout;
            // 55P03: lock_timeout; 40001/40P01: serialization failure, deadlock.
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "40001" | "40P01"
                )
        }),
        _ => false,
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
}
