//! Who may read the operator endpoints (`/admin/config`, `/metrics`, the detailed `/readyz`): open, or an operator token, compiled at load.

use crate::config::OperatorConfig;

use super::auth::{digests_from_env, token_in_digests, token_in_request};

/// The query parameter an operator request may carry its token in (else `Authorization: Bearer`).
pub const TOKEN_PARAM: &str = "token";

/// The operator endpoints' gate, compiled at load (the token read and digested).
#[derive(Debug, Clone)]
pub enum Operator {
    /// No `operator` section: anyone who reaches the port may read them.
    Open,
    /// Digests of the accepted tokens, or why there are none (the variable is not set):
    /// then nobody is admitted.
    Token(Result<Vec<[u8; 32]>, String>),
}

/// Whether an operator request was let in, and if not, why (for the log; never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    Missing,
    Rejected,
    /// A token is required but its variable is not set.
    Misconfigured,
}

impl Operator {
    /// Compiles the `operator` section.
    pub fn compile(cfg: Option<&OperatorConfig>) -> Operator {
        match cfg {
            None => Operator::Open,
            Some(c) => Operator::Token(digests_from_env(&c.token_env)),
        }
    }

    /// Checks an operator request by its query string and `Authorization` header.
    pub fn check(&self, query: Option<&str>, authorization: Option<&str>) -> Access {
        let Operator::Token(accepted) = self else {
            return Access::Granted;
        };
        let Some(token) = token_in_request(query, TOKEN_PARAM, authorization) else {
            return Access::Missing;
        };
        match accepted {
            Err(_) => Access::Misconfigured,
            Ok(list) if token_in_digests(list, &token) => Access::Granted,
            Ok(_) => Access::Rejected,
        }
    }

    /// Why the gate admits nobody, if it does not (for a warning at load).
    pub fn misconfigured(&self) -> Option<&str> {
        match self {
            Operator::Token(Err(e)) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tokens(list: &str) -> Operator {
        use sha2::{Digest, Sha256};
        Operator::Token(Ok(list
            .split(',')
            .map(|t| Sha256::digest(t.trim().as_bytes()).into())
            .collect()))
    }

    #[test]
    fn open_admits_everyone() {
        assert_eq!(Operator::Open.check(None, None), Access::Granted);
        assert_eq!(Operator::compile(None).check(None, None), Access::Granted);
    }

    #[test]
    fn token_by_bearer_or_query() {
        let op = with_tokens("op-secret-1, op-secret-2");
        assert_eq!(op.check(None, Some("Bearer op-secret-1")), Access::Granted);
        assert_eq!(op.check(Some("token=op-secret-2"), None), Access::Granted);
        assert_eq!(
            op.check(Some("a=1&token=op%2Dsecret%2D1"), None),
            Access::Granted
        );
        assert_eq!(op.check(None, None), Access::Missing);
        assert_eq!(op.check(Some("token="), None), Access::Missing);
        assert_eq!(op.check(None, Some("Bearer op-secret")), Access::Rejected);
        // The WebSocket's parameter is not the operator's.
        assert_eq!(
            op.check(Some("fal_jwt_token=op-secret-1"), None),
            Access::Missing
        );
    }

    #[test]
    fn an_unset_variable_admits_nobody() {
        let op = Operator::compile(Some(&OperatorConfig {
            token_env: "SCOPE_ROUTER_TEST_UNSET_OPERATOR_VAR".to_owned(),
        }));
        assert!(op.misconfigured().is_some());
        assert_eq!(op.check(None, Some("Bearer x")), Access::Misconfigured);
        assert_eq!(op.check(None, None), Access::Missing);
    }
}
