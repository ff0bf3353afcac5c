//! A PullImage's `AuthConfig` as the daemon's registry credentials, read as containerd's CRI
//! reads it (`ParseAuth`, containerd 1.6): `username`/`password` when a username is given,
//! else `auth` (base64 of `username:password`). An identity or registry token has no
//! equivalent in the daemon's puller: such a pull's cold pull goes with the node's
//! credentials, and containerd pulls it itself if those do not do.

use k8s_cri::v1::AuthConfig;

use crate::registry::{decode_basic_auth, Credentials};

/// The credentials `auth` carries, or `None` when it carries none the daemon can use. Never
/// formats `auth` (its `Debug` prints the password).
pub fn credentials_of(auth: &AuthConfig) -> Option<Credentials> {
    if !auth.username.is_empty() {
        return Some(Credentials::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        });
    }
    if !auth.auth.is_empty() {
        return decode_basic_auth(&auth.auth).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn username_first_then_auth_and_tokens_are_not_used() {
        let both = AuthConfig {
            username: "alice".into(),
            password: "pw".into(),
            // "bob:other"
            auth: "Ym9iOm90aGVy".into(),
            ..Default::default()
        };
        assert_eq!(credentials_of(&both), basic("alice", "pw"));
        let auth_only = AuthConfig {
            auth: "Ym9iOm90aGVy".into(),
            ..Default::default()
        };
        assert_eq!(credentials_of(&auth_only), basic("bob", "other"));
        let token = AuthConfig {
            identity_token: "tok".into(),
            ..Default::default()
        };
        assert_eq!(credentials_of(&token), None);
        let bad = AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        };
        assert_eq!(credentials_of(&bad), None);
        assert_eq!(credentials_of(&AuthConfig::default()), None);
    }
}
