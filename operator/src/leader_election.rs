//! Leader election between operator replicas with a `coordination.k8s.io/v1`
//! Lease, following client-go's protocol, and running the controller only
//! while this replica holds the Lease.
//!
//! Why not a crate: `kube-leader-election` targets kube 4, and
//! `kube-lease-manager` (kube 5) renews and takes over expired leases with
//! unconditional strategic-merge patches, so two candidates racing for an
//! expired lease can both believe they lead until the next renewal. Here every
//! write is a create or a replace carrying the `resourceVersion` that was read,
//! so the API server lets exactly one of two racing candidates win (the other
//! gets 409 Conflict).
//!
//! Safety margins, as in client-go:
//! - expiry is judged on this replica's monotonic clock, from when the Lease
//!   record was last seen to change, never by comparing the holder's
//!   `renewTime` with our wall clock, so clock skew between nodes cannot make
//!   a live lease look expired;
//! - a leader that cannot renew for `renew_deadline` steps down, and
//!   `renew_deadline < lease_duration`, so it stops before any other replica
//!   may take over.
//!
//! The decisions ([`decide`], [`claimed`], [`still_leading`]) are pure and
//! unit-tested; [`LeaderElector`] does the I/O; [`run_while_leading`] starts
//! and stops the controller as leadership comes and goes.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

/// Everything leader election needs, validated once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity: unique among candidates (the pod name).
    pub identity: String,
    /// How long a lease lasts after its last renewal before others may take it.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

/// Why a [`LeaseConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("leader election needs an identity (the pod name)")]
    NoIdentity,
    #[error("leader election needs a lease name and namespace")]
    NoLease,
    #[error(
        "leader election needs lease duration > renew deadline > retry period > 0 \
         (got {lease_duration:?}, {renew_deadline:?}, {retry_period:?})"
    )]
    Timing {
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    },
    #[error("the lease duration must be whole seconds, at least 1s (got {0:?})")]
    Duration(Duration),
}

impl LeaseConfig {
    /// Check the invariants the protocol's safety rests on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.identity.is_empty() {
            return Err(ConfigError::NoIdentity);
        }
        if self.lease_name.is_empty() || self.namespace.is_empty() {
            return Err(ConfigError::NoLease);
        }
        if !(self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period
            && self.retry_period > Duration::ZERO)
        {
            return Err(ConfigError::Timing {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        if self.lease_duration.subsec_nanos() != 0
            || i32::try_from(self.lease_duration.as_secs()).is_err()
        {
            return Err(ConfigError::Duration(self.lease_duration));
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        // Validated: whole seconds that fit an i32.
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// What to do with the Lease in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it with us as the holder.
    Create,
    /// The Lease is free, or its holder stopped renewing: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Another replica holds a live lease: wait.
    Follow,
}

/// The round's decision. `unchanged_for` is how long, on our clock, the
/// Lease record has been seen without any change; the holder's lease has
/// expired once that exceeds the duration the holder wrote (or `default`).
#[must_use]
pub fn decide(
    identity: &str,
    lease: Option<&LeaseSpec>,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match lease.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(holder) if holder == identity => Decision::Renew,
        Some(_) => {
            let duration = lease
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if unchanged_for >= duration {
                Decision::Acquire
            } else {
                Decision::Follow
            }
        }
    }
}

/// The Lease record to write for `decision` (`Create`, `Acquire` or `Renew`).
#[must_use]
pub fn claimed(
    current: Option<&LeaseSpec>,
    identity: &str,
    decision: Decision,
    now: &MicroTime,
    lease_duration_seconds: i32,
) -> LeaseSpec {
    let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
    let mut spec = current.cloned().unwrap_or_default();
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(lease_duration_seconds);
    spec.renew_time = Some(now.clone());
    match decision {
        Decision::Renew => {
            if spec.acquire_time.is_none() {
                spec.acquire_time = Some(now.clone());
            }
        }
        Decision::Acquire => {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(transitions.saturating_add(1));
        }
        Decision::Create | Decision::Follow => {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(0);
        }
    }
    spec
}

/// The Lease record a leader writes when it steps down, so a standby takes
/// over at its next round instead of waiting for expiry.
#[must_use]
pub fn released(current: &LeaseSpec, now: &MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(now.clone()),
        acquire_time: None,
        ..current.clone()
    }
}

/// Whether this replica leads after a round. `round` is `Some(held)` when
/// the round reached the API server, `None` when it failed; a leader that
/// has not renewed for `renew_deadline` steps down.
#[must_use]
pub fn still_leading(
    was_leading: bool,
    round: Option<bool>,
    last_renewal: Option<Instant>,
    now: Instant,
    renew_deadline: Duration,
) -> bool {
    match round {
        Some(held) => held,
        None => {
            was_leading
                && last_renewal.is_some_and(|at| now.saturating_duration_since(at) < renew_deadline)
        }
    }
}

/// One candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease record last seen and when it was first seen in that state.
    observed: Option<(LeaseSpec, Instant)>,
}

impl LeaderElector {
    /// A candidate; `config` must be valid.
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        })
    }

    /// Remember `spec` as seen at `now`; return for how long it has been unchanged.
    fn observe(&mut self, spec: &LeaseSpec, now: Instant) -> Duration {
        match &self.observed {
            Some((seen, since)) if seen == spec => now.saturating_duration_since(*since),
            _ => {
                self.observed = Some((spec.clone(), now));
                Duration::ZERO
            }
        }
    }

    /// One round at `now`: read the Lease, then create, take or renew it if
    /// the protocol allows. `Ok(true)` if this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let name = self.config.lease_name.clone();
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = self.config.lease_duration_seconds();
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let spec = claimed(
                None,
                &self.config.identity,
                Decision::Create,
                &stamp,
                seconds,
            );
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default(), now);
                    Ok(true)
                }
                // Another candidate created it first; read it next round.
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let unchanged_for = self.observe(&spec, now);
        let decision = decide(
            &self.config.identity,
            Some(&spec),
            unchanged_for,
            self.config.lease_duration,
        );
        if decision == Decision::Follow {
            return Ok(false);
        }
        if decision == Decision::Acquire {
            info!(
                lease = %name,
                previous = spec.holder_identity.as_deref().unwrap_or(""),
                "taking the operator lease"
            );
        }
        // The resourceVersion read above stays in the metadata: the replace
        // succeeds only if nobody wrote the Lease since.
        lease.spec = Some(claimed(
            Some(&spec),
            &self.config.identity,
            decision,
            &stamp,
            seconds,
        ));
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written.spec.unwrap_or_default(), now);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Give the Lease up if this replica holds it.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let name = self.config.lease_name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(
            &spec,
            &MicroTime(k8s_openapi::jiff::Timestamp::now()),
        ));
        self.api
            .replace(&name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %name, "released the operator lease");
        Ok(())
    }

    /// Campaign for the Lease and keep it, publishing whether this replica
    /// leads on `leading`, until every receiver is gone; then release it.
    pub async fn run(mut self, leading: watch::Sender<bool>) {
        let mut last_renewal: Option<Instant> = None;
        loop {
            let round = tokio::time::timeout(
                self.config.renew_deadline,
                self.try_acquire_or_renew(Instant::now()),
            )
            .await;
            let now = Instant::now();
            let round = match round {
                Ok(Ok(held)) => Some(held),
                Ok(Err(error)) => {
                    warn!("leader election round failed: {error}");
                    None
                }
                Err(_) => {
                    warn!(
                        "leader election round timed out after {:?}",
                        self.config.renew_deadline
                    );
                    None
                }
            };
            if round == Some(true) {
                last_renewal = Some(now);
            }
            let was = *leading.borrow();
            let is = still_leading(was, round, last_renewal, now, self.config.renew_deadline);
            if is != was {
                if is {
                    info!(identity = %self.config.identity, "became the leader");
                } else {
                    warn!(identity = %self.config.identity, "lost the lease");
                }
                leading.send_replace(is);
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.retry_period) => {}
                () = leading.closed() => break,
            }
        }
        if *leading.borrow() {
            match tokio::time::timeout(self.config.retry_period, self.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => warn!("releasing the lease failed: {error}"),
                Err(_) => warn!("releasing the lease timed out"),
            }
        }
    }
}

/// How [`run_while_leading`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The controller returned (it stops on SIGTERM or Ctrl-C).
    ControllerStopped,
    /// `shutdown` fired while this replica was standing by.
    Shutdown,
    /// The elector went away: leadership can no longer be proven.
    ElectionStopped,
}

/// Run `controller()` while `leading` says so: start it when leadership is
/// gained, drop it (stopping every watch and reconcile) when it is lost, and
/// start a fresh one if leadership comes back. While standing by, `shutdown()`
/// ends the wait.
pub async fn run_while_leading<C, CF, S, SF>(
    mut leading: watch::Receiver<bool>,
    mut controller: C,
    mut shutdown: S,
) -> Ended
where
    C: FnMut() -> CF,
    CF: Future<Output = ()>,
    S: FnMut() -> SF,
    SF: Future<Output = ()>,
{
    loop {
        {
            let stop = shutdown();
            tokio::pin!(stop);
            while !*leading.borrow_and_update() {
                tokio::select! {
                    changed = leading.changed() => {
                        if changed.is_err() {
                            return Ended::ElectionStopped;
                        }
                    }
                    () = &mut stop => return Ended::Shutdown,
                }
            }
        }
        info!("leading: starting the controller");
        let run = controller();
        tokio::pin!(run);
        loop {
            tokio::select! {
                () = &mut run => return Ended::ControllerStopped,
                changed = leading.changed() => {
                    if changed.is_err() {
                        return Ended::ElectionStopped;
                    }
                    if !*leading.borrow_and_update() {
                        warn!("lost the lease: stopping the controller");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
