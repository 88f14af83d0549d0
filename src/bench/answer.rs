//! What a client of the bench was told for one request: the decision, `pending`, or nothing
//! usable. The bench counts decisions from the database; answers only time the requests and
//! count the errors.

use crate::domain::Status;

/// The answer to one request, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// The path decided the request and said so.
    Decided(Status),
    /// The queue path accepted it, but its decision did not come within the wait.
    Pending,
    /// No answer to count on: the request failed, was refused, or its body could not be read.
    Error,
}

impl Answer {
    /// The answer an order body's `status` names (`purchased`, …, or `pending`).
    pub fn from_status(status: &str) -> Answer {
        match status {
            "pending" => Answer::Pending,
            other => Status::parse(other).map_or(Answer::Error, Answer::Decided),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_body_status_names_its_answer() {
        assert_eq!(
            Answer::from_status("sold_out"),
            Answer::Decided(Status::SoldOut)
        );
        assert_eq!(Answer::from_status("pending"), Answer::Pending);
        assert_eq!(Answer::from_status("teapot"), Answer::Error);
    }
}
