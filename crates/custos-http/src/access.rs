//! Who may call what: bearer tokens, roles, and the rule that a user reaches only itself.

use axum::http::HeaderMap;
use custos_core::AccountId;

use crate::problem::Problem;

/// The roles of API.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The chat product's back-end.
    Service,
    /// A token bound to one account.
    User,
    /// Creates and reads training exports.
    Trainer,
    /// Read-only reports and the ledger.
    Auditor,
    /// Everything above, holds, sweeps, tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Service,
        Role::User,
        Role::Trainer,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::User => "user",
            Role::Trainer => "trainer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The account a `user` token is bound to.
    pub account: Option<AccountId>,
}

/// The bearer token of a request, if it sent one in the right form.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Which callers a route admits. `admin` is always admitted (API.md: "everything above").
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub roles: &'static [Role],
    /// Whether a `user` token is admitted for its own account.
    pub user_self: bool,
}

impl Allowed {
    pub const fn roles(roles: &'static [Role]) -> Allowed {
        Allowed {
            roles,
            user_self: false,
        }
    }

    pub const fn and_user_self(roles: &'static [Role]) -> Allowed {
        Allowed {
            roles,
            user_self: true,
        }
    }

    /// Checks `caller` against this route, for a request about `account` (if it names one).
    pub fn check(&self, caller: &Caller, account: Option<&AccountId>) -> Result<(), Problem> {
        if caller.role == Role::Admin || self.roles.contains(&caller.role) {
            return Ok(());
        }
        if self.user_self
            && caller.role == Role::User
            && account.is_some()
            && caller.account.as_ref() == account
        {
            return Ok(());
        }
        Err(Problem::forbidden())
    }
}
