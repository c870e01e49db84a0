//! Why the registry refused a command or a query.

use std::fmt;

/// A command or query the registry refuses. Deterministic: every replica refuses the same
/// command for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A field is malformed; `field` names it as the API spells it.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The offending field, e.g. `port` or `attributes["version"]`.
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked for.
        kind: Kind,
        /// Its full name.
        name: String,
    },
    /// An object with this name exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What was created.
        kind: Kind,
        /// Its full name.
        name: String,
    },
    /// The object exists but is not in a state that allows the command.
    #[error("{0}")]
    FailedPrecondition(String),
}

/// The kinds of object the registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A namespace (DNS domain).
    Namespace,
    /// A service inside a namespace.
    Service,
    /// An instance of a service.
    Instance,
    /// The route of a service.
    Route,
    /// An ACL token (named by its accessor).
    Token,
}

// === impl RegistryError ===

impl RegistryError {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with its field name prefixed, e.g. `health_check.` + `timeout_ms`.
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => Self::InvalidArgument {
                field: format!("{prefix}{field}"),
                reason,
            },
            other => other,
        }
    }
}

// === impl Kind ===

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Namespace => "namespace",
            Self::Service => "service",
            Self::Instance => "instance",
            Self::Route => "route of service",
            Self::Token => "token",
        })
    }
}
