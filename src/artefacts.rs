//! The files a config points to, checked before the server runs on them: the TLS certificate
//! and key, the users file, `relay.ca_file`, the DKIM keys, the queue directory and the
//! suspension state kept in it.
//!
//! Kept apart from `config` (which only reads the config text and imports nothing) so that
//! `user add` and the dev bootstrap work before these files exist, and so that loading them
//! stays with the modules that own their formats (`tls`, `auth`, `dkim`).

use std::io::ErrorKind;
use std::path::Path;

use crate::config::{ConfigErrors, Problems, Settings};

/// Check the files `settings` point to: the certificate and key load into a TLS config, the
/// users file parses (argon2 hashes only), `relay.ca_file` holds certificates, every DKIM key
/// loads, the queue directory (or, when it does not exist yet, its nearest ancestor) is a
/// directory, and the suspension state in it (if any) is readable. Every problem is reported,
/// named by the config key that points to the file.
pub fn check_files(settings: &Settings) -> Result<(), ConfigErrors> {
    let mut problems = Problems::new(&settings.config_path);
    let p = &mut problems;

    check_tls(settings, p);
    let overlay = settings.auth.backend != crate::config::AuthBackend::File;
    let load = if overlay {
        crate::auth::users::load_overlay
    } else {
        crate::auth::users::load
    };
    if let Some(users) = &settings.auth.users
        && let Err(e) = load(users)
    {
        p.push("auth.users", e.to_string());
    }
    if let Ok(crate::auth::keyhome::KeyHome::File { path, .. }) =
        crate::auth::keyhome::KeyHome::from_settings(settings)
        && let Err(e) = crate::auth::keys::load(&path)
    {
        p.push("auth.keys", e.to_string());
    }
    if let Some(ca) = &settings.relay.ca_file
        && let Err(e) = crate::tls::load_certs(ca)
    {
        p.push("relay.ca_file", e.to_string());
    }
    if let Err(errors) = crate::dkim::DkimSigner::load(&settings.dkim) {
        for (i, e) in errors.0 {
            p.push(format!("dkim[{i}].key"), e.to_string());
        }
    }

    crate::webhook::check_files(settings, p);

    let dir = &settings.queue.dir;
    check_queue_dir(dir, p);
    // The suspension state (a missing file is fine: nobody is suspended). The server would run
    // with a broken one, ignoring it; check-config says so.
    if dir.is_dir()
        && let Err(e) = crate::auth::suspend::load(&crate::auth::suspend::state_path(dir))
    {
        p.push("queue.dir", e.to_string());
    }
    problems.finish()
}

/// `tls.cert` and `tls.key` each load, and belong together.
fn check_tls(settings: &Settings, p: &mut Problems<'_>) {
    let tls = &settings.tls;
    let certs = crate::tls::load_certs(&tls.cert).map_err(|e| p.push("tls.cert", e.to_string()));
    let key = crate::tls::load_key(&tls.key).map_err(|e| p.push("tls.key", e.to_string()));
    if certs.is_ok() && key.is_ok() {
        // Both load: what is left is whether they belong together.
        if let Err(e) = crate::tls::load_server_config(&tls.cert, &tls.key) {
            let k = if e.path() == Some(tls.cert.display().to_string().as_str()) {
                "tls.cert"
            } else {
                "tls.key"
            };
            p.push(k, e.to_string());
        }
    }
}

/// `queue.dir` is a directory, or can be created: it is created at startup (mode 0700, missing
/// parents with the default mode), so the nearest existing ancestor must be a directory.
fn check_queue_dir(dir: &Path, p: &mut Problems<'_>) {
    let absent =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => p.push("queue.dir", format!("{}: not a directory", dir.display())),
        Err(e) if absent(&e) => {
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor.filter(|a| !a.as_os_str().is_empty()) {
                match std::fs::metadata(a) {
                    Ok(m) if m.is_dir() => break,
                    Ok(_) => {
                        p.push(
                            "queue.dir",
                            format!(
                                "{}: cannot be created: {} is not a directory",
                                dir.display(),
                                a.display()
                            ),
                        );
                        break;
                    }
                    Err(e) if absent(&e) => ancestor = a.parent(),
                    Err(e) => {
                        p.push(
                            "queue.dir",
                            format!("{}: {}: {e}", dir.display(), a.display()),
                        );
                        break;
                    }
                }
            }
        }
        Err(e) => p.push("queue.dir", format!("{}: {e}", dir.display())),
    }
}
