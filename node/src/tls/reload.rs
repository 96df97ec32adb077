//! A TLS configuration built from files and rebuilt when they change, so
//! certificates rotate without a restart. A file that cannot be read or does
//! not build (half written, key not matching the certificate yet) keeps the
//! previous configuration: the listener never goes down over a rotation.
//! Connections already open keep their session; new handshakes take
//! [`Reloading::current`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::TlsError;

/// How often the watcher reads the files again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

type Build<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync>;

/// What one [`Reloading::refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    Unchanged,
    Reloaded,
    /// The files changed but do not build; the previous configuration stays.
    Kept(String),
}

struct State<T> {
    /// The file contents `current` was built from.
    loaded: Vec<Vec<u8>>,
    current: Arc<T>,
    /// The last warning logged, so a file that stays bad is reported once.
    last_warning: Option<String>,
}

/// A value built from the contents of `files`, rebuilt on change.
pub struct Reloading<T> {
    what: String,
    files: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

fn read_all(files: &[PathBuf]) -> Result<Vec<Vec<u8>>, TlsError> {
    files
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

impl<T> Reloading<T> {
    /// Reads `files` and builds the first configuration; any error is
    /// returned (at start-up a bad file is fatal, unlike during rotation).
    pub fn load(
        what: impl Into<String>,
        files: Vec<PathBuf>,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let loaded = read_all(&files)?;
        let current = Arc::new(build(&loaded)?);
        Ok(Reloading {
            what: what.into(),
            files,
            build: Box::new(build),
            state: Mutex::new(State {
                loaded,
                current,
                last_warning: None,
            }),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<T> {
        self.lock().current.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the files again; rebuilds when any changed. Blocking file I/O.
    pub fn refresh(&self) -> Refreshed {
        let outcome = read_all(&self.files).and_then(|contents| {
            if contents == self.lock().loaded {
                return Ok(None);
            }
            let built = (self.build)(&contents)?;
            Ok(Some((contents, built)))
        });
        let mut state = self.lock();
        match outcome {
            Ok(None) => Refreshed::Unchanged,
            Ok(Some((contents, built))) => {
                state.loaded = contents;
                state.current = Arc::new(built);
                state.last_warning = None;
                tracing::info!(what = %self.what, files = ?self.files, "reloaded TLS certificates");
                Refreshed::Reloaded
            }
            Err(e) => {
                let warning = e.to_string();
                if state.last_warning.as_ref() != Some(&warning) {
                    tracing::warn!(what = %self.what, error = %warning, "TLS files changed but do not load; keeping the previous certificates");
                    state.last_warning = Some(warning.clone());
                }
                Refreshed::Kept(warning)
            }
        }
    }
}

/// Something the watcher refreshes.
pub trait Refresh: Send + Sync {
    fn refresh(&self) -> Refreshed;
}

impl<T: Send + Sync> Refresh for Reloading<T> {
    fn refresh(&self) -> Refreshed {
        Reloading::refresh(self)
    }
}

/// Refreshes `configs` every [`RELOAD_INTERVAL`] until `stop` flips.
pub async fn watch(configs: Vec<Arc<dyn Refresh>>, mut stop: watch::Receiver<bool>) {
    if configs.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let configs = configs.clone();
        // Reading files blocks; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            for config in &configs {
                config.refresh();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Builds" a file into its text, refusing text that says "bad".
    fn load(path: &std::path::Path) -> Result<Reloading<String>, TlsError> {
        Reloading::load("test", vec![path.to_path_buf()], |contents| {
            let text = String::from_utf8_lossy(&contents[0]).into_owned();
            if text.contains("bad") {
                return Err(TlsError::Pem {
                    path: "f".into(),
                    reason: "bad".into(),
                });
            }
            Ok(text)
        })
    }

    #[test]
    fn reloads_on_change_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "one").expect("write");
        let reloading = load(&path).expect("first load");
        assert_eq!(*reloading.current(), "one");
        assert_eq!(reloading.refresh(), Refreshed::Unchanged);

        std::fs::write(&path, "two").expect("write");
        assert_eq!(reloading.refresh(), Refreshed::Reloaded);
        assert_eq!(*reloading.current(), "two");

        // Half-written or invalid: the previous value stays.
        std::fs::write(&path, "bad").expect("write");
        assert!(matches!(reloading.refresh(), Refreshed::Kept(_)));
        assert_eq!(*reloading.current(), "two");

        // Gone for a moment (a rename dance): still the previous value.
        std::fs::remove_file(&path).expect("remove");
        let kept = reloading.refresh();
        assert!(
            matches!(&kept, Refreshed::Kept(w) if w.contains("cert.pem")),
            "{kept:?}"
        );
        assert_eq!(*reloading.current(), "two");

        std::fs::write(&path, "three").expect("write");
        assert_eq!(reloading.refresh(), Refreshed::Reloaded);
        assert_eq!(*reloading.current(), "three");
    }

    #[test]
    fn a_missing_file_at_start_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.pem");
        let err = load(&path).err().expect("must fail").to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
