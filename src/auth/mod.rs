//! Authentication: SASL decoding ([`sasl`], pure), the users file ([`users`]), argon2id
//! verification off the reactor on a bounded pool ([`verify`]) behind a cache of verified
//! credentials ([`cache`]), scoped API keys checked before argon2 ([`keys`]), sender ownership
//! ([`senders`]), and the cross-connection defences: login throttling ([`throttle`]), per-user
//! sending limits ([`quota`]) and account suspension ([`suspend`]), counted with the bounded
//! sliding windows of [`window`].

pub mod backend;
pub mod cache;
pub mod directory;
pub mod keyhome;
pub mod keys;
pub mod quota;
pub mod sasl;
pub mod senders;
pub mod suspend;
pub mod throttle;
pub mod users;
pub mod verify;
pub mod window;

use std::sync::Arc;

use crate::config::Settings;

/// Keep `suspensions`' copy of the shared store's suspension set fresh: read every
/// [`SHARED_SUSPENSIONS_EVERY`] (a suspension made anywhere takes effect everywhere within
/// about that), kept as it was while the store does not answer. Ends with `shutdown`.
pub async fn follow_shared_suspensions(
    shared: Arc<crate::state::Shared>,
    suspensions: Arc<suspend::Suspensions>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Some(set) = shared.answered(shared.store().suspensions().await) {
            suspensions.set_shared(
                set.into_iter()
                    .map(|(login, s)| {
                        let entry = suspend::Suspension {
                            since: s.since,
                            reason: s.reason,
                        };
                        (login, entry)
                    })
                    .collect(),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(SHARED_SUSPENSIONS_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How often the shared suspension set is read.
pub const SHARED_SUSPENSIONS_EVERY: std::time::Duration = std::time::Duration::from_millis(400);

/// The directory backend `auth.backend` selects, `None` for the file backend. Reads the files
/// its section names (blocking; call before serving); connects to nothing yet.
pub fn directory(
    settings: &Settings,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Result<Option<directory::DirectoryAuth>, backend::BackendError> {
    let auth = &settings.auth;
    let Some(found) = backend::Directory::from_settings(&auth.backend, auth.backend_timeout)?
    else {
        return Ok(None);
    };
    Ok(Some(directory::DirectoryAuth::new(
        found,
        auth.backend_timeout,
        auth.default_senders.clone(),
        metrics,
    )))
}

/// The verifier (bounded argon2 pool, login throttle) and the sending quota (with the
/// suspension state in `<queue.dir>/suspended.json`) of a server, from `[limits]`.
/// Reads the suspension state file once: call before serving, not on the reactor.
pub fn defences(
    users: users::UserStore,
    settings: &Settings,
    shared: Option<Arc<crate::state::Shared>>,
) -> (verify::Verifier, Arc<quota::Quota>) {
    let limits = &settings.limits;
    let parallel = limits.auth_parallel.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let suspensions = Arc::new(suspend::Suspensions::open(&suspend::state_path(
        &settings.queue.dir,
    )));
    let throttle = throttle::AuthThrottle::new(throttle::ThrottleLimits {
        window: limits.auth_window,
        per_ip: limits.auth_failures_per_ip,
        per_login: limits.auth_failures_per_login,
    });
    throttle.set_ipv6_prefix(limits.ipv6_prefix);
    let throttle = throttle.with_shared(shared.clone());
    let verifier = verify::Verifier::with_limits(
        users,
        verify::VerifierLimits {
            parallel,
            queue: limits.auth_queue,
            throttle: Some(Arc::new(throttle)),
            suspensions: Some(Arc::clone(&suspensions)),
            cache_ttl: settings.auth.cache_ttl,
            clock: cache::Clock::system(),
        },
    );
    let quota = Arc::new(quota::Quota::new(limits.user_limits, suspensions).with_shared(shared));
    (verifier, quota)
}
