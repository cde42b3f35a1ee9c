//! [`MockDriver`]: the shared handle to one mock driver: its configuration, state, fault queue,
//! call counters and exit hook.
//!
//! Clones share everything, so a test keeps one clone to inject faults and read state while a
//! [`MockServer`](crate::MockServer) serves another. All locks are synchronous and never held
//! across an `.await`; a call's handler runs under the state lock, so calls are serialised, as a
//! careful real driver serialises operations on one volume. With a state file, every successful
//! mutating call rewrites the file (atomically, by rename) before it answers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tonic::Status;

use crate::config::MockConfig;
use crate::controller::Backend;
use crate::error::MockError;
use crate::fault::{Fault, FaultQueue, FaultRule, FaultSpec, FaultSpecError};
use crate::method::Method;
use crate::state::MockState;

/// Called with the exit status when an [`Outcome::Exit`](crate::Outcome::Exit) fault fires.
pub type ExitHook = Arc<dyn Fn(i32) + Send + Sync>;

/// An in-memory CSI driver. Cheap to clone; clones share state, faults and counters.
///
/// ```no_run
/// # async fn demo() -> Result<(), csi_mock::MockError> {
/// use csi_mock::{Fault, Method, MockConfig, MockDriver, MockServer};
/// use tonic::Code;
///
/// let driver = MockDriver::new(MockConfig::default());
/// driver.inject(Method::CreateVolume, Fault::error(Code::Unavailable, "busy").times(2));
/// let server = MockServer::start("unix:///tmp/csi.sock", driver.clone()).await?;
/// // ... run the code under test against server.endpoint() ...
/// assert_eq!(driver.calls(Method::CreateVolume), 3);
/// server.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MockDriver {
    inner: Arc<Inner>,
}

struct Inner {
    config: RwLock<MockConfig>,
    state: Mutex<MockState>,
    faults: Mutex<FaultQueue>,
    calls: Mutex<BTreeMap<Method, u64>>,
    /// Woken on every call, for [`MockDriver::wait_for_calls`].
    call_notify: Notify,
    ready: AtomicBool,
    exit_hook: Mutex<Option<ExitHook>>,
}

impl fmt::Debug for MockDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDriver")
            .field("driver_name", &self.config().driver_name)
            .field("volumes", &lock(&self.inner.state).volumes.len())
            .field("faults", &lock(&self.inner.faults).rules().len())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent, and a
/// panicking test must not cascade into every other user of the driver.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the state file; a missing file is an empty state.
fn load_state(path: &Path) -> Result<MockState, MockError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| MockError::ParseState {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MockState::default()),
        Err(source) => Err(MockError::ReadState {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the state file atomically: a reader (or a crash) sees the old or the new file whole.
fn save_state(path: &Path, state: &MockState) -> Result<(), MockError> {
    let write_error = |source| MockError::WriteState {
        path: path.to_owned(),
        source,
    };
    // Compact: the whole state is written on every mutating call, and with thousands of volumes
    // (the benchmarks) the pretty form cost the driver more CPU than the controllers it serves.
    let json = serde_json::to_vec(state).map_err(|e| write_error(e.into()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, json).map_err(write_error)?;
    std::fs::rename(&tmp, path).map_err(write_error)
}

impl MockDriver {
    /// Creates a driver, loading `config.state_file` if it exists.
    ///
    /// # Panics
    /// If the state file exists but cannot be read or parsed; use [`MockDriver::try_new`] to
    /// handle that.
    pub fn new(config: MockConfig) -> Self {
        match Self::try_new(config) {
            Ok(driver) => driver,
            Err(e) => panic!("cannot create the mock driver: {e}"),
        }
    }

    /// Creates a driver, loading `config.state_file` if it exists.
    pub fn try_new(config: MockConfig) -> Result<Self, MockError> {
        let state = match &config.state_file {
            Some(path) => load_state(path)?,
            None => MockState::default(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config: RwLock::new(config),
                state: Mutex::new(state),
                faults: Mutex::default(),
                calls: Mutex::default(),
                call_notify: Notify::new(),
                ready: AtomicBool::new(true),
                exit_hook: Mutex::new(None),
            }),
        })
    }

    /// A copy of the configuration.
    pub fn config(&self) -> MockConfig {
        self.inner
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the configuration of a running driver; the next call sees the change.
    pub fn configure(&self, change: impl FnOnce(&mut MockConfig)) {
        change(
            &mut self
                .inner
                .config
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// Queues `fault` for calls of `method`. See [`crate::fault`] for precedence.
    pub fn inject(&self, method: Method, fault: Fault) {
        tracing::info!(method = %method, fault = %fault, "fault injected");
        lock(&self.inner.faults).push(Some(method), fault);
    }

    /// Queues `fault` for calls of every method.
    pub fn inject_all(&self, fault: Fault) {
        tracing::info!(method = "*", fault = %fault, "fault injected");
        lock(&self.inner.faults).push(None, fault);
    }

    /// Queues a fault given in its JSON form.
    pub fn inject_spec(&self, spec: &FaultSpec) -> Result<(), FaultSpecError> {
        let (method, fault) = spec.to_rule()?;
        match method {
            Some(method) => self.inject(method, fault),
            None => self.inject_all(fault),
        }
        Ok(())
    }

    /// The queued faults in precedence order, with their remaining counts.
    pub fn faults(&self) -> Vec<FaultRule> {
        lock(&self.inner.faults).rules().to_vec()
    }

    /// Removes every queued fault. Calls already delayed or hanging are not released.
    pub fn clear_faults(&self) {
        tracing::info!("faults cleared");
        lock(&self.inner.faults).clear();
    }

    /// A copy of the current state.
    pub fn state(&self) -> MockState {
        lock(&self.inner.state).clone()
    }

    /// Changes the state directly (to preload volumes, mark one abnormal, ...), then persists it.
    pub fn update_state(&self, change: impl FnOnce(&mut MockState)) -> Result<(), MockError> {
        let mut state = lock(&self.inner.state);
        change(&mut state);
        match &self.config().state_file {
            Some(path) => save_state(path, &state),
            None => Ok(()),
        }
    }

    /// How many calls of `method` arrived (including those answered by a fault).
    pub fn calls(&self, method: Method) -> u64 {
        lock(&self.inner.calls).get(&method).copied().unwrap_or(0)
    }

    /// Every method called so far with its count.
    pub fn all_calls(&self) -> BTreeMap<Method, u64> {
        lock(&self.inner.calls).clone()
    }

    /// Sets every call count back to zero.
    pub fn reset_calls(&self) {
        lock(&self.inner.calls).clear();
    }

    /// Waits until `method` was called at least `at_least` times; false if `timeout` passed first.
    pub async fn wait_for_calls(&self, method: Method, at_least: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut notified = pin!(self.inner.call_notify.notified());
            // Register before checking, so a call between the check and the wait is not missed.
            notified.as_mut().enable();
            if self.calls(method) >= at_least {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.calls(method) >= at_least;
            }
        }
    }

    /// Sets what Probe reports (default: ready).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// What Probe reports.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Sets what an exit fault does. The binary installs `std::process::exit`; without a hook an
    /// exit fault fails the call with UNAVAILABLE instead.
    pub fn on_exit(&self, hook: impl Fn(i32) + Send + Sync + 'static) {
        *lock(&self.inner.exit_hook) = Some(Arc::new(hook));
    }

    /// Runs the exit hook; false if there is none (or it returned).
    pub(crate) fn exit(&self, code: i32) -> bool {
        let hook = lock(&self.inner.exit_hook).clone();
        match hook {
            Some(hook) => {
                hook(code);
                true
            }
            None => false,
        }
    }

    /// Counts a call of `method` and takes the fault that applies to it, if any.
    pub(crate) fn begin_call(&self, method: Method) -> Option<Fault> {
        *lock(&self.inner.calls).entry(method).or_default() += 1;
        self.inner.call_notify.notify_waiters();
        lock(&self.inner.faults).take(method)
    }

    /// Runs a call's handler under the state lock and persists the state after a successful
    /// mutating call. A failed write is INTERNAL: the change is made but not durable.
    pub(crate) fn handle<R>(
        &self,
        method: Method,
        handler: impl FnOnce(&mut Backend<'_>) -> Result<R, Status>,
    ) -> Result<R, Status> {
        let config = self.config();
        let mut state = lock(&self.inner.state);
        let mut backend = Backend {
            config: &config,
            state: &mut state,
            now_ms: now_ms(),
            ready: self.is_ready(),
        };
        let result = handler(&mut backend)?;
        if method.is_mutating()
            && let Some(path) = &config.state_file
            && let Err(e) = save_state(path, &state)
        {
            tracing::error!(method = %method, error = %e, "state not persisted");
            return Err(Status::internal(format!("{e}")));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Outcome;
    use csi::v1 as pb;
    use tonic::Code;

    fn create(driver: &MockDriver, name: &str) -> Result<pb::CreateVolumeResponse, Status> {
        driver.handle(Method::CreateVolume, |b| {
            b.create_volume(pb::CreateVolumeRequest {
                name: name.into(),
                volume_capabilities: vec![pb::VolumeCapability {
                    access_type: Some(pb::volume_capability::AccessType::Block(
                        pb::volume_capability::BlockVolume {},
                    )),
                    access_mode: Some(pb::volume_capability::AccessMode {
                        mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter.into(),
                    }),
                }],
                ..Default::default()
            })
        })
    }

    #[test]
    fn clones_share_state_faults_and_counts() {
        let a = MockDriver::new(MockConfig::default());
        let b = a.clone();
        create(&a, "v1").unwrap();
        assert!(b.state().volume_by_name("v1").is_some());
        b.inject(Method::Probe, Fault::error(Code::Internal, "x").once());
        assert_eq!(a.faults().len(), 1);
        let fault = a.begin_call(Method::Probe).unwrap();
        assert!(matches!(
            fault.outcome,
            Outcome::Error {
                code: Code::Internal,
                ..
            }
        ));
        assert!(b.begin_call(Method::Probe).is_none());
        assert_eq!(b.calls(Method::Probe), 2);
        assert_eq!(a.all_calls(), BTreeMap::from([(Method::Probe, 2)]));
        a.reset_calls();
        assert_eq!(b.calls(Method::Probe), 0);
    }

    #[test]
    fn state_file_is_written_after_mutations_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let config = MockConfig {
            state_file: Some(path.clone()),
            ..MockConfig::default()
        };
        let driver = MockDriver::try_new(config.clone()).unwrap();
        assert!(!path.exists(), "nothing to persist yet");
        let id = create(&driver, "v1").unwrap().volume.unwrap().volume_id;
        assert!(path.exists());

        let again = MockDriver::try_new(config).unwrap();
        assert_eq!(again.state(), driver.state());
        // The id counter survives, so new ids never collide with old ones.
        let id2 = create(&again, "v2").unwrap().volume.unwrap().volume_id;
        assert!(id2 > id, "{id2} > {id}");
    }

    #[test]
    fn corrupt_state_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = MockDriver::try_new(MockConfig {
            state_file: Some(path),
            ..MockConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, MockError::ParseState { .. }), "{err}");
    }

    #[tokio::test]
    async fn wait_for_calls_sees_later_calls_and_times_out() {
        let driver = MockDriver::new(MockConfig::default());
        assert!(
            !driver
                .wait_for_calls(Method::Probe, 1, Duration::from_millis(20))
                .await
        );
        let d = driver.clone();
        let waiter = tokio::spawn(async move {
            d.wait_for_calls(Method::Probe, 2, Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        driver.begin_call(Method::Probe);
        driver.begin_call(Method::Probe);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn exit_hook_runs_when_installed() {
        let driver = MockDriver::new(MockConfig::default());
        assert!(!driver.exit(3));
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        driver.on_exit(move |code| *s.lock().unwrap() = Some(code));
        assert!(driver.exit(3));
        assert_eq!(*seen.lock().unwrap(), Some(3));
    }
}
