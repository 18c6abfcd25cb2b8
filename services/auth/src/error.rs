//! The one error type of this crate.

use tessera_persistence::StoreError;

/// Why an auth call failed. `Display` is one sentence fit to show a player; operators find the
/// underlying cause of [`AuthError::Storage`] in its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The name breaks the naming rules; the string says which rule, as a sentence.
    #[error("{0}")]
    InvalidName(String),

    /// The password breaks the password rules; the string says which rule, as a sentence.
    #[error("{0}")]
    InvalidPassword(String),

    #[error("That name is taken.")]
    NameTaken,

    /// Unknown name or wrong password: deliberately the same error, so names cannot be probed.
    #[error("Wrong name or password.")]
    BadCredentials,

    /// Too many failed logins recently; the password was not checked.
    #[error(
        "Too many failed logins; try again in {retry_after_secs} {}.",
        seconds_word(*.retry_after_secs)
    )]
    RateLimited { retry_after_secs: u64 },

    /// Too many accounts were created recently, from this address or from everywhere; the
    /// password was not hashed.
    #[error(
        "Too many new accounts {}; try again in {} {}.",
        if *.this_address { "from your address" } else { "right now" },
        minutes(*.retry_after_secs),
        minutes_word(minutes(*.retry_after_secs))
    )]
    TooManyAccounts {
        retry_after_secs: u64,
        /// The address's own limit (else the limit over all addresses).
        this_address: bool,
    },

    /// A privileged request without a valid operator signature; the string says why.
    #[error("Not authorised: {0}.")]
    NotAuthorized(String),

    #[error("Your session token is invalid; please log in again.")]
    TokenInvalid,

    #[error("Your session has expired; please log in again.")]
    TokenExpired,

    /// The token's session was logged out.
    #[error("That session has ended; please log in again.")]
    SessionEnded,

    #[error("There is no account called {0}.")]
    NoSuchAccount(String),

    /// The account service could not be reached (a remote auth service is down).
    #[error("The account service is unavailable; please try again in a moment.")]
    Unavailable(String),

    #[error("The account service cannot reach its storage; please try again later.")]
    Storage(#[from] StoreError),

    /// The signing key file could not be read or created (an operator problem, at startup).
    #[error("The session signing key is unusable: {0}.")]
    Key(String),

    /// Hashing a password failed; not expected with the fixed parameters.
    #[error("The account service could not process the password; please try again later.")]
    PasswordHashing(String),
}

/// Whole minutes, rounded up, at least 1.
fn minutes(secs: u64) -> u64 {
    secs.div_ceil(60).max(1)
}

fn minutes_word(n: u64) -> &'static str {
    if n == 1 {
        "minute"
    } else {
        "minutes"
    }
}

fn seconds_word(n: u64) -> &'static str {
    if n == 1 {
        "second"
    } else {
        "seconds"
    }
}
