//! Opening the spool at start-up ([`Spool::open`]): directory work only, so that a large
//! queue never delays the listeners. Remove what an interrupted write left (`*.tmp`), create
//! the directory when missing, migrate a version 1 queue ([`super::migrate`]). Entries are
//! checked by whoever reads them first (the scheduler's start-up load; see [`super::spool`]).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::fsio::{RealIo, SpoolIo};
use super::migrate;
use super::spool::{Spool, SpoolError, create_dir, io_err};

impl Spool {
    /// Open (creating with mode 0700 when missing, parents too) the queue directory, remove what
    /// an interrupted write left (`*.tmp`) and migrate a version 1 queue. Directory work only:
    /// entries are checked by whoever reads them first (see the module doc).
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with_io(dir, Arc::new(RealIo))
    }

    /// [`Spool::open`] writing through `io` (the storage-fault tests pass a
    /// [`super::fsio::FaultyIo`]).
    pub fn open_with_io(dir: &Path, io: Arc<dyn SpoolIo>) -> Result<Spool, SpoolError> {
        create_dir(dir).map_err(io_err(dir, "create directory"))?;
        let spool = Spool::with_io(dir, io);
        for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
            let entry = entry.map_err(io_err(dir, "read directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file && name.ends_with(".tmp") {
                tracing::warn!(file = %entry.path().display(), "removing interrupted queue write");
                let _ = spool.io().remove(&entry.path());
            }
        }
        migrate::migrate(&spool)?;
        Ok(spool)
    }
}
