//! Bearer tokens: who may call what. seckill does not know buyers; it trusts the caller of
//! `POST /orders` to have authenticated the buyer it names in `user_id` (a shop's own login, in
//! front of it). Two optional tokens let an operator say who that caller may be: the producer
//! token for the order routes, the admin token for the item routes. Without them, anyone who
//! reaches the port may order as any user, which is why a public bind needs both (or an
//! explicit `--allow-public-without-token`, see [`crate::config::ServeArgs::check_exposure`]).

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Who a token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Creates and restocks items.
    Admin,
    /// Posts orders and reads their answers.
    Producer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Producer => "producer",
        }
    }
}

/// Checks `Authorization: Bearer <token>` in constant time, when a token is configured.
pub fn authorize(expected: Option<&str>, role: Role, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(role.as_str()))
    }
}
