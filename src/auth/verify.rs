//! argon2id password hashing and verification, off the async reactor and on a bounded pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use super::users::{User, UserStore};

/// OWASP's argon2id recommendation (Password Storage Cheat Sheet): 19 MiB, 2 passes, 1 lane.
const M_COST_KIB: u32 = 19456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn hasher() -> Result<Argon2<'static>, argon2::password_hash::Error> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2id with the OWASP parameters m=19456 KiB, t=2, p=1; returns a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(hasher()?
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// A PHC string with submitd's parameters that no password is known to match: what an unknown
/// login is checked against, so it costs one argon2 run like a wrong password does.
pub fn dummy_phc() -> String {
    // A fixed salt is fine: this hash protects nothing, it only has to cost the same.
    let salt = SaltString::encode_b64(b"submitd-no-user!").expect("16-byte salt is valid");
    hasher()
        .and_then(|h| h.hash_password(b"submitd dummy password for unknown logins", &salt))
        .expect("fixed argon2 parameters and salt are valid")
        .to_string()
}

/// Verifies credentials against the user store. An unknown login is verified against a dummy
/// hash with the same parameters so that it costs the same time as a wrong password.
#[derive(Clone)]
pub struct Verifier {
    users: UserStore,
    permits: Arc<Semaphore>,
    dummy: Arc<str>,
    /// argon2 verifications run so far (tests check the unknown-login path really runs one).
    verifications: Arc<AtomicU64>,
}

impl Verifier {
    /// `max_parallel` bounds how many argon2 verifications run at once (spawn_blocking).
    pub fn new(users: UserStore, max_parallel: usize) -> Verifier {
        // Each verification holds ~19 MiB; 0 would deadlock every AUTH, so at least one.
        let permits = max_parallel.clamp(1, Semaphore::MAX_PERMITS);
        Verifier {
            users,
            permits: Arc::new(Semaphore::new(permits)),
            dummy: dummy_phc().into(),
            verifications: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The user, when `password` is right for `login`; `None` otherwise (unknown or wrong).
    pub async fn verify(&self, login: &str, password: &str) -> Option<Arc<User>> {
        // The semaphore is never closed, so acquire only fails if that changes.
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let users = self.users.clone();
        let dummy = Arc::clone(&self.dummy);
        let counter = Arc::clone(&self.verifications);
        let login = login.to_owned();
        let password = password.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            // The permit moves in here so that it is released when argon2 is done, even if
            // the session that asked is dropped meanwhile: the bound holds for real work.
            let _permit = permit;
            // The lookup may stat and re-read the users file: blocking IO, so it runs here.
            let user = users.get(&login);
            let stored = user
                .as_ref()
                .and_then(|u| PasswordHash::new(&u.password).ok());
            let ok = match &stored {
                Some(hash) => Argon2::default()
                    .verify_password(password.as_bytes(), hash)
                    .is_ok(),
                None => {
                    // Unknown login (or an unusable stored hash): spend the same time anyway
                    // so response timing does not reveal which logins exist.
                    if let Ok(hash) = PasswordHash::new(&dummy) {
                        let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
                    }
                    false
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if ok { user } else { None }
        });
        match task.await {
            Ok(user) => user,
            Err(e) => {
                tracing::error!(error = %e, "password verification task failed");
                None
            }
        }
    }

    /// The store this verifier reads.
    pub fn users(&self) -> &UserStore {
        &self.users
    }

    /// How many argon2 verifications this verifier (and its clones) has run.
    #[cfg(test)]
    pub(crate) fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("users", &self.users)
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::senders::SenderPattern;

    fn user(login: &str, password: &str) -> User {
        User {
            login: login.into(),
            password: hash_password(password).unwrap(),
            senders: vec![SenderPattern::parse(login).unwrap()],
        }
    }

    #[test]
    fn hash_has_the_documented_parameters() {
        let phc = hash_password("secret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_ne!(phc, hash_password("secret").unwrap(), "salt is random");
        let dummy = dummy_phc();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{dummy}"
        );
        // The dummy must be a hash the users file would accept, i.e. a real PHC string.
        let text = format!("[[user]]\nlogin = \"a@x.test\"\npassword = \"{dummy}\"\n");
        crate::auth::users::parse(&text, std::path::Path::new("t")).unwrap();
    }

    #[tokio::test]
    async fn right_wrong_and_unknown() {
        let store = UserStore::from_users(vec![user("alice@x.test", "correct horse")]);
        let verifier = Verifier::new(store, 2);
        assert_eq!(verifier.verifications(), 0);

        let got = verifier.verify("alice@x.test", "correct horse").await;
        assert_eq!(
            got.map(|u| u.login.clone()).as_deref(),
            Some("alice@x.test")
        );
        assert_eq!(verifier.verifications(), 1);

        assert!(verifier.verify("alice@x.test", "wrong").await.is_none());
        assert!(verifier.verify("alice@x.test", "").await.is_none());
        assert!(
            verifier
                .verify("ALICE@x.test", "correct horse")
                .await
                .is_none()
        );
        assert_eq!(verifier.verifications(), 4);

        // Unknown login: still one full argon2 run, and None even for the dummy's password.
        assert!(
            verifier
                .verify("nobody@x.test", "correct horse")
                .await
                .is_none()
        );
        assert!(
            verifier
                .verify("nobody@x.test", "submitd dummy password for unknown logins")
                .await
                .is_none()
        );
        assert_eq!(verifier.verifications(), 6);
        assert!(verifier.users().get("alice@x.test").is_some());
    }

    #[tokio::test]
    async fn concurrent_verifications_share_the_bound() {
        let store = UserStore::from_users(vec![user("alice@x.test", "pw")]);
        let verifier = Verifier::new(store, 0); // clamped to 1, must not deadlock
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..3 {
            let v = verifier.clone();
            let pw = if i == 0 { "pw" } else { "nope" };
            tasks.spawn(async move { v.verify("alice@x.test", pw).await.is_some() });
        }
        let mut oks = 0;
        while let Some(r) = tasks.join_next().await {
            oks += usize::from(r.unwrap());
        }
        assert_eq!(oks, 1);
        assert_eq!(verifier.verifications(), 3);
        assert_eq!(verifier.permits.available_permits(), 1);
    }
}
