//! What names and passwords may look like.

use crate::AuthError;

/// Fewest characters in a name.
pub const NAME_MIN_CHARS: usize = 3;
/// Most characters in a name.
pub const NAME_MAX_CHARS: usize = 20;
/// Shortest password, in bytes of UTF-8.
pub const PASSWORD_MIN_BYTES: usize = 4;
/// Longest password, in bytes of UTF-8.
pub const PASSWORD_MAX_BYTES: usize = 128;

/// Checks a player name: 3 to 20 characters, an ASCII letter first, then ASCII letters, digits
/// or `_`. Uniqueness is case-insensitive, but this does not check it (see
/// [`crate::Auth::create_account`]). Cheap: routers call it before anything else.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let chars = name.chars().count();
    if !(NAME_MIN_CHARS..=NAME_MAX_CHARS).contains(&chars) {
        return Err(AuthError::InvalidName(format!(
            "Names must be {NAME_MIN_CHARS} to {NAME_MAX_CHARS} characters long."
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(AuthError::InvalidName(
            "Names must start with a letter (a-z).".into(),
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(AuthError::InvalidName(
            "Names may only use the letters a-z, digits and underscores.".into(),
        ));
    }
    Ok(())
}

/// Checks a new password: 4 to 128 bytes, no control characters.
pub fn validate_password(password: &str) -> Result<(), AuthError> {
    if !(PASSWORD_MIN_BYTES..=PASSWORD_MAX_BYTES).contains(&password.len()) {
        return Err(AuthError::InvalidPassword(format!(
            "Passwords must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes long."
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(AuthError::InvalidPassword(
            "Passwords must not contain control characters.".into(),
        ));
    }
    Ok(())
}

/// The form a name is stored and compared under.
pub(crate) fn canonical_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases: &[(&str, bool)] = &[
            ("Bob", true),
            ("bob_the_2nd", true),
            ("A23", true),
            ("abcdefghijklmnopqrst", true),
            ("abcdefghijklmnopqrstu", false),
            ("ab", false),
            ("", false),
            ("1bob", false),
            ("_bob", false),
            ("bo b", false),
            ("bob!", false),
            ("bob-x", false),
            ("Zoë", false),
            ("éabc", false),
            ("bob\n", false),
            (" bob", false),
        ];
        for &(name, ok) in cases {
            assert_eq!(validate_name(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn name_errors_say_what_is_wrong() {
        let msg = |n: &str| validate_name(n).unwrap_err().to_string();
        assert_eq!(msg("ab"), "Names must be 3 to 20 characters long.");
        assert_eq!(msg("9lives"), "Names must start with a letter (a-z).");
        assert_eq!(
            msg("bob!"),
            "Names may only use the letters a-z, digits and underscores."
        );
    }

    #[test]
    fn passwords() {
        let long = "x".repeat(PASSWORD_MAX_BYTES);
        let too_long = "x".repeat(PASSWORD_MAX_BYTES + 1);
        let cases: &[(&str, bool)] = &[
            ("abcd", true),
            ("correct horse battery staple", true),
            ("pässwörd", true),
            (&long, true),
            (&too_long, false),
            ("abc", false),
            ("", false),
            ("abc\tdef", false),
            ("abc\u{7f}def", false),
            ("abc\u{85}def", false),
        ];
        for &(password, ok) in cases {
            assert_eq!(validate_password(password).is_ok(), ok, "{password:?}");
        }
    }
}
