//! Turning etcd authentication on for a KvCluster (`spec.auth`), one step
//! at a time and idempotently: the members' auth state is read first, and
//! [`next_step`] (pure) says what is missing. etcd refuses `AuthEnable`
//! until user `root` has role `root`; the operator also needs its own user
//! with role `root`, since it changes membership and takes snapshots.
//!
//! Every step is safe to repeat after a crash: adding what exists is never
//! asked for, because the state is read again before each step.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng as _, distr::Alphanumeric};

/// etcd's superuser and its role.
pub const ROOT: &str = "root";
/// The operator's own user (granted `root`: it manages membership).
pub const OPERATOR_USER: &str = "witan-operator";
/// Key of the password in the operator's credentials Secret.
pub const PASSWORD_KEY: &str = "password";
/// Key of the user name in the operator's credentials Secret.
pub const USER_KEY: &str = "username";
/// Length of the operator's generated password (alphanumeric: ~190 bits).
const PASSWORD_LEN: usize = 32;

/// The auth state as the members report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    pub roles: BTreeSet<String>,
    /// User name -> the roles granted to it.
    pub users: BTreeMap<String, BTreeSet<String>>,
}

/// What to do next to turn auth on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// `RoleAdd root` (etcdctl does this too before `auth enable`).
    AddRootRole,
    /// `UserAdd` with the password from the matching Secret.
    AddUser { user: String },
    /// `UserGrantRole user root`.
    GrantRoot { user: String },
    /// `AuthEnable`.
    Enable,
    /// Auth is on; the operator authenticates as [`OPERATOR_USER`].
    Done,
}

/// The next step towards auth enabled with `root` and `operator_user` both
/// holding role `root`. Once auth is on nothing more is done: users and
/// roles then belong to the cluster's administrators.
#[must_use]
pub fn next_step(state: &AuthState, operator_user: &str) -> AuthStep {
    if state.enabled {
        return AuthStep::Done;
    }
    if !state.roles.contains(ROOT) {
        return AuthStep::AddRootRole;
    }
    for user in [ROOT, operator_user] {
        match state.users.get(user) {
            None => {
                return AuthStep::AddUser {
                    user: user.to_string(),
                };
            }
            Some(roles) if !roles.contains(ROOT) => {
                return AuthStep::GrantRoot {
                    user: user.to_string(),
                };
            }
            Some(_) => {}
        }
    }
    AuthStep::Enable
}

/// The most steps turning auth on can take (role, two users, two grants,
/// enable): a bound on the loop that drives [`next_step`].
pub const MAX_STEPS: usize = 6;

/// A fresh password for the operator's user.
#[must_use]
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// The name of the Secret holding the operator's user and password for a
/// cluster (owned by the KvCluster, read by the backup jobs).
#[must_use]
pub fn credentials_secret(cluster: &str) -> String {
    format!("{cluster}-operator-auth")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    /// Applies a step to a state the way the members would.
    fn apply(state: &mut AuthState, step: &AuthStep) {
        match step {
            AuthStep::AddRootRole => {
                state.roles.insert(ROOT.into());
            }
            AuthStep::AddUser { user } => {
                state.users.insert(user.clone(), BTreeSet::new());
            }
            AuthStep::GrantRoot { user } => {
                state
                    .users
                    .get_mut(user)
                    .expect("granted to an existing user")
                    .insert(ROOT.into());
            }
            AuthStep::Enable => state.enabled = true,
            AuthStep::Done => {}
        }
    }

    #[test]
    fn from_nothing_root_role_then_root_then_the_operator_then_enable() {
        let mut state = AuthState::default();
        let mut steps = Vec::new();
        for _ in 0..=MAX_STEPS {
            let step = next_step(&state, OPERATOR_USER);
            if step == AuthStep::Done {
                break;
            }
            apply(&mut state, &step);
            steps.push(step);
        }
        assert_eq!(
            steps,
            [
                AuthStep::AddRootRole,
                AuthStep::AddUser {
                    user: "root".into()
                },
                AuthStep::GrantRoot {
                    user: "root".into()
                },
                AuthStep::AddUser {
                    user: "witan-operator".into()
                },
                AuthStep::GrantRoot {
                    user: "witan-operator".into()
                },
                AuthStep::Enable,
            ]
        );
        assert_eq!(steps.len(), MAX_STEPS);
        assert!(state.enabled);
    }

    #[test]
    fn enabled_auth_is_left_alone_whatever_the_users() {
        let state = AuthState {
            enabled: true,
            ..AuthState::default()
        };
        assert_eq!(next_step(&state, OPERATOR_USER), AuthStep::Done);
    }

    #[test]
    fn what_exists_is_not_added_again_after_a_crash() {
        // An administrator (or an earlier run) made root already.
        let state = AuthState {
            enabled: false,
            roles: roles(&["root", "app"]),
            users: BTreeMap::from([
                ("root".into(), roles(&["root"])),
                ("app".into(), roles(&["app"])),
            ]),
        };
        assert_eq!(
            next_step(&state, OPERATOR_USER),
            AuthStep::AddUser {
                user: "witan-operator".into()
            }
        );
        let state = AuthState {
            users: BTreeMap::from([
                ("root".into(), roles(&["root"])),
                ("witan-operator".into(), roles(&[])),
            ]),
            ..state
        };
        assert_eq!(
            next_step(&state, OPERATOR_USER),
            AuthStep::GrantRoot {
                user: "witan-operator".into()
            }
        );
    }

    #[test]
    fn a_root_user_without_the_root_role_gets_it_before_enable() {
        let state = AuthState {
            enabled: false,
            roles: roles(&["root"]),
            users: BTreeMap::from([
                ("root".into(), roles(&[])),
                ("witan-operator".into(), roles(&["root"])),
            ]),
        };
        assert_eq!(
            next_step(&state, OPERATOR_USER),
            AuthStep::GrantRoot {
                user: "root".into()
            }
        );
    }

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_fresh() {
        let a = generate_password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }
}
