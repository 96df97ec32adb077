//! The controller's security side effects: reading the operator's TLS and
//! auth material from Secrets, applying cert-manager Certificates and the
//! NetworkPolicy, and driving `auth::next_step` against the members.

use k8s_openapi::{
    ByteString,
    api::{core::v1::Secret, networking::v1::NetworkPolicy},
};
use kube::{
    Api,
    api::{DynamicObject, Patch, PostParams},
    discovery,
    runtime::events::EventType,
};
use tracing::{info, warn};

use super::{Context, apply, apply_params, publish_note};
use crate::{
    Error, Result,
    access::{Access, ClientTls, Credentials},
    auth::{self, AuthStep, OPERATOR_USER, PASSWORD_KEY},
    crd::KvCluster,
    names::ClusterNames,
    resources::{certificates, credentials, network_policy, tls},
};

/// Event reason when a Secret the spec relies on is missing.
pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";

/// Event reason when `spec.tls.certManager` is set without cert-manager.
pub const CERT_MANAGER_MISSING: &str = "CertManagerMissing";

/// How to reach this cluster's members: the operator's client certificate
/// (`spec.tls`) and its user (`spec.auth`). A TLS Secret that is missing
/// (cert-manager may not have issued it yet) is reported with a Warning
/// Event and leaves the members unreachable for this reconcile, while the
/// children (the Certificates among them) are still applied.
pub(super) async fn access(kvc: &KvCluster, names: &ClusterNames, ctx: &Context) -> Result<Access> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let tls = match &kvc.spec.tls {
        Some(spec) => match operator_tls(&spec.operator_secret(&names.name), &secrets).await {
            Ok(tls) => Some(tls),
            Err(Error::MissingSecret(what)) => {
                // Handled here: the user (or cert-manager) has to provide it.
                warn!("missing Secret: {what}");
                publish_note(
                    ctx,
                    kvc,
                    EventType::Warning,
                    CREDENTIALS_MISSING,
                    format!(
                        "missing Secret: {what}; the members cannot be reached until it exists"
                    ),
                )
                .await;
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    let credentials = if kvc.spec.auth_enabled() {
        Some(Credentials {
            user: OPERATOR_USER.into(),
            password: operator_password(kvc, names, &secrets).await?,
        })
    } else {
        None
    };
    Ok(Access { tls, credentials })
}

/// The operator's client certificate from the Secret `name`.
async fn operator_tls(name: &str, secrets: &Api<Secret>) -> Result<ClientTls> {
    let secret = secrets.get_opt(name).await?.ok_or_else(|| {
        Error::MissingSecret(format!(
            "{name} (the operator's client certificate; spec.tls)"
        ))
    })?;
    let key = |key: &str| {
        secret_bytes(&secret, key)
            .ok_or_else(|| Error::MissingSecret(format!("key {key} of Secret {name}")))
    };
    Ok(ClientTls {
        ca_pem: key(tls::CA_KEY)?,
        cert_pem: key(tls::CERT_KEY)?,
        key_pem: key(tls::KEY_KEY)?,
    })
}

fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|ByteString(bytes)| bytes.clone())
}

fn secret_string(secret: &Secret, key: &str) -> Option<String> {
    secret_bytes(secret, key).and_then(|b| String::from_utf8(b).ok())
}

/// The operator's password: from its credentials Secret, created with a
/// fresh password the first time.
async fn operator_password(
    kvc: &KvCluster,
    names: &ClusterNames,
    secrets: &Api<Secret>,
) -> Result<String> {
    let name = auth::credentials_secret(&names.name);
    if let Some(secret) = secrets.get_opt(&name).await? {
        return secret_string(&secret, PASSWORD_KEY)
            .ok_or_else(|| Error::MissingSecret(format!("key {PASSWORD_KEY} of Secret {name}")));
    }
    let password = auth::generate_password();
    let secret = credentials::build(kvc, names, &password)?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = name, "created the operator's credentials");
            Ok(password)
        }
        // Another operator replica won the race: use what it stored.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let secret = secrets.get(&name).await?;
            secret_string(&secret, PASSWORD_KEY)
                .ok_or_else(|| Error::MissingSecret(format!("key {PASSWORD_KEY} of Secret {name}")))
        }
        Err(error) => Err(error.into()),
    }
}

/// The root password from `spec.auth.rootPasswordSecretRef`.
async fn root_password(kvc: &KvCluster, names: &ClusterNames, ctx: &Context) -> Result<String> {
    let Some(spec) = &kvc.spec.auth else {
        return Err(Error::InvalidResource("spec.auth is not set".into()));
    };
    let reference = &spec.root_password_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let missing = || {
        Error::MissingSecret(format!(
            "key {} of Secret {} (spec.auth.rootPasswordSecretRef)",
            reference.key, reference.name
        ))
    };
    let secret = secrets
        .get_opt(&reference.name)
        .await?
        .ok_or_else(missing)?;
    secret_string(&secret, &reference.key)
        .filter(|p| !p.is_empty())
        .ok_or_else(missing)
}

/// Turn auth on, step by step (bounded), once the members answer.
pub(super) async fn ensure_auth(
    kvc: &KvCluster,
    names: &ClusterNames,
    ctx: &Context,
    endpoints: &[String],
    access: &Access,
) -> Result<()> {
    if !kvc.spec.auth_enabled() || endpoints.is_empty() {
        return Ok(());
    }
    for _ in 0..auth::MAX_STEPS {
        let state = ctx.members.auth_state(endpoints, access).await?;
        let step = auth::next_step(&state, OPERATOR_USER);
        let password = match &step {
            AuthStep::Done => return Ok(()),
            AuthStep::AddUser { user } if user == auth::ROOT => {
                root_password(kvc, names, ctx).await?
            }
            AuthStep::AddUser { .. } => access
                .credentials
                .as_ref()
                .map(|c| c.password.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        ctx.members
            .auth_apply(endpoints, access, &step, &password)
            .await?;
        let note = match &step {
            AuthStep::AddRootRole => "added role root".to_string(),
            AuthStep::AddUser { user } => format!("added user {user}"),
            AuthStep::GrantRoot { user } => format!("granted role root to {user}"),
            AuthStep::Enable => "enabled authentication".to_string(),
            AuthStep::Done => String::new(),
        };
        info!(%note, "auth step");
        publish_note(ctx, kvc, EventType::Normal, "Auth", note).await;
    }
    Ok(())
}

/// The cert-manager Certificates, when asked for and cert-manager is
/// installed; a Warning Event says so when it is not.
pub(super) async fn apply_certificates(
    kvc: &KvCluster,
    names: &ClusterNames,
    ctx: &Context,
) -> Result<()> {
    let Some(tls) = &kvc.spec.tls else {
        return Ok(());
    };
    let Some(issuer) = &tls.cert_manager else {
        return Ok(());
    };
    let resource = match discovery::pinned_kind(&ctx.client, &certificates::gvk()).await {
        Ok((resource, _)) => resource,
        Err(error) => {
            // Handled here: the rest of the cluster is still reconciled.
            warn!("cert-manager Certificates are not served: {error}");
            publish_note(
                ctx,
                kvc,
                EventType::Warning,
                CERT_MANAGER_MISSING,
                "spec.tls.certManager is set but the API server does not serve cert-manager.io/v1 Certificate: install cert-manager or provide the TLS Secrets yourself".into(),
            )
            .await;
            return Ok(());
        }
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &names.namespace, &resource);
    for certificate in certificates::build(kvc, names, tls, issuer)? {
        let name = certificate.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &apply_params(), &Patch::Apply(&certificate))
            .await?;
    }
    Ok(())
}

/// The NetworkPolicy exists while `spec.networkPolicy.enabled`; it is
/// deleted when `enabled` turns false (a cluster that never set
/// `spec.networkPolicy` costs no API call).
pub(super) async fn apply_network_policy(
    kvc: &KvCluster,
    names: &ClusterNames,
    ctx: &Context,
) -> Result<()> {
    let Some(choice) = &kvc.spec.network_policy else {
        return Ok(());
    };
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let name = network_policy::name(names);
    match network_policy::build(kvc, names, choice, &ctx.operator_peer)? {
        Some(policy) => apply(&api, &name, &policy).await,
        None => super::delete_if_present(&api, &name).await,
    }
}
