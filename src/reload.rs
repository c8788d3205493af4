//! Live reload (SIGHUP, `submitd reload` through the control socket): re-read the config
//! file, the certificate and key, the DKIM keys and the users file, and build from them what
//! new sessions will be served with. [`crate::server`] swaps it in.
//!
//! Everything is read and checked off the reactor before anything changes, each file once: a
//! config that does not parse, a certificate that does not load or an unreadable users file is
//! refused with an error line naming the file and the problem (every problem at once, as
//! `check-config` reports them), and the server goes on with what it had. Open sessions keep
//! the settings they started with.
//!
//! Some keys only take effect at startup, like Postfix's `inet_interfaces`: the listen
//! addresses, `hostname` (the queue and delivery use it too), `queue.*`, `relay.*`,
//! `auth.users` (the file's *path*; its content reloads) and the limits held by long-lived
//! counters (`auth_*`, `user_*`, `suspend_recipients_per_hour`). A change to one of them is
//! logged as "needs restart" and otherwise ignored.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tracing::warn;

use crate::auth::users::{FreshUsers, UserStore};
use crate::config::{ConfigError, ConfigErrors, Settings};
use crate::dkim::DkimSigner;

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<&'static str>,
    /// Users loaded from the users file.
    pub users: usize,
}

/// Something that reloads a running server (SIGHUP and the control socket ask it).
pub trait Reload: Clone + Send + Sync + 'static {
    /// Re-read the config the server started with and apply it to new connections; on error
    /// nothing changes, and the reasons are logged and returned.
    fn reload(&self) -> impl Future<Output = Result<Reloaded, ConfigErrors>> + Send;
}

/// Everything a reload loaded, checked and not yet in use.
pub(crate) struct Prepared {
    /// The new settings, with the running values of the keys that need a restart.
    pub(crate) settings: Settings,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) dkim: DkimSigner,
    /// The users file, for [`UserStore::install`].
    pub(crate) users: FreshUsers,
    /// Keys whose new value waits for a restart.
    pub(crate) needs_restart: Vec<&'static str>,
}

/// Blocking: load and check everything, each file once; every problem is reported, and
/// nothing is returned unless all of it is good.
pub(crate) fn prepare(
    old: &Settings,
    path: &Path,
    users: &UserStore,
) -> Result<Prepared, ConfigErrors> {
    let mut new = Settings::load(path)?;
    let needs_restart = keep_restart_keys(old, &mut new);
    for key in &needs_restart {
        warn!(key, file = %path.display(), "changed value needs restart; keeping the running one");
    }
    let mut errors = Vec::new();
    let mut fail = |key: String, message: String| {
        errors.push(ConfigError {
            file: path.to_path_buf(),
            key,
            message,
        })
    };
    let tls = load_tls(&new, &mut fail);
    let users = users
        .read_fresh()
        .map_err(|e| fail("auth.users".into(), e.to_string()));
    // Restart-only keys, checked as `check-config` checks them: a reload refuses what a
    // restart would refuse.
    if let Some(ca) = &new.relay.ca_file
        && let Err(e) = crate::tls::load_certs(ca)
    {
        fail("relay.ca_file".into(), e.to_string());
    }
    let dkim = DkimSigner::load(&new.dkim).map_err(|errors| {
        for (i, e) in errors.0 {
            fail(format!("dkim[{i}].key"), e.to_string());
        }
    });
    let dir = &new.queue.dir;
    if dir.is_dir()
        && let Err(e) = crate::auth::suspend::load(&crate::auth::suspend::state_path(dir))
    {
        fail("queue.dir".into(), e.to_string());
    }
    match (tls, users, dkim) {
        (Some(tls), Ok(users), Ok(dkim)) if errors.is_empty() => Ok(Prepared {
            settings: new,
            tls,
            dkim,
            users,
            needs_restart,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// The certificate and key, loaded once; on failure each file's problem under its own key.
fn load_tls(
    new: &Settings,
    fail: &mut impl FnMut(String, String),
) -> Option<Arc<rustls::ServerConfig>> {
    let (cert, key) = (&new.tls.cert, &new.tls.key);
    let e = match crate::tls::load_server_config(cert, key) {
        Ok(tls) => return Some(tls),
        Err(e) => e,
    };
    if e.path() == Some(cert.display().to_string().as_str()) {
        fail("tls.cert".into(), e.to_string());
        // The chain stopped the load before the key was read: say what is wrong with it too.
        if let Err(e) = crate::tls::load_key(key) {
            fail("tls.key".into(), e.to_string());
        }
    } else {
        fail("tls.key".into(), e.to_string());
    }
    None
}

/// Put back into `new` the values of keys that need a restart, and name those that differed.
fn keep_restart_keys(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                changed.push($key);
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!("hostname", hostname);
    keep!("listen.submission", listen.submission);
    keep!("listen.submissions", listen.submissions);
    keep!("auth.users", auth.users);
    keep!("queue", queue);
    keep!("relay", relay);
    keep!("dev", dev);
    keep!("auth.cache_ttl", auth.cache_ttl);
    keep!("auth.backend", auth.backend);
    keep!("auth.backend_timeout", auth.backend_timeout);
    keep!("auth.default_senders", auth.default_senders);
    keep!("metrics.listen", metrics.listen);
    keep!("log.format", log.format);
    keep!("limits.auth_window", limits.auth_window);
    keep!("limits.auth_failures_per_ip", limits.auth_failures_per_ip);
    keep!(
        "limits.auth_failures_per_login",
        limits.auth_failures_per_login
    );
    keep!("limits.auth_parallel", limits.auth_parallel);
    keep!("limits.auth_queue", limits.auth_queue);
    keep!("limits.user_*", limits.user_limits);
    // The dispatchers and their backlog directories are made at start.
    keep!("webhook", webhook);
    // The list is opened at start (its journal in queue.dir).
    keep!("suppression", suppression);
    // The API listener, its bounds and its certificate choice are set when it is bound.
    keep!("api", api);
    // The verifier holds the key store it opened at start.
    keep!("auth.keys", auth.keys);
    changed
}
