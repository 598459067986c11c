//! What a process is told: its role, the servers, its addresses and
//! namespace ([`ServeSettings`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{REDIS_ROOT, STREAM};
use crate::db::redact_url;
use crate::inventory::Inventory;
use crate::limits::Limits;
use crate::payment::Payment;
use crate::payment::vault::VaultKey;
use crate::processor::{self as card};
use crate::service::SagaService;
use crate::shipping::Shipping;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API, the orders service, auth and the catalog.
    Gateway,
    /// The inventory service's consumer.
    Inventory,
    /// The payment service's consumer.
    Payment,
    /// The shipping service's consumer.
    Shipping,
    /// The relays of every outbox.
    Relay,
    /// The card processor simulator.
    Processor,
}

impl Role {
    /// Every role, in the order a system is best started.
    pub const ALL: [Self; 6] = [
        Self::Processor,
        Self::Relay,
        Self::Inventory,
        Self::Payment,
        Self::Shipping,
        Self::Gateway,
    ];

    /// The role's name on the command line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Inventory => Inventory::NAME,
            Self::Payment => Payment::NAME,
            Self::Shipping => Shipping::NAME,
            Self::Relay => "relay",
            Self::Processor => "processor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|role| role.name()).collect();
                format!("no service {name:?}; one of {}", names.join(", "))
            })
    }
}

/// Where the servers are. `Debug` shows the URLs without their passwords
/// ([`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Infrastructure {
    /// A PostgreSQL URL.
    pub postgres: String,
    /// A NATS URL (JetStream enabled).
    pub nats: String,
    /// A Redis URL.
    pub redis: String,
}

impl std::fmt::Debug for Infrastructure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infrastructure")
            .field("postgres", &redact_url(&self.postgres))
            .field("nats", &redact_url(&self.nats))
            .field("redis", &redact_url(&self.redis))
            .finish()
    }
}

/// How one process runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// What it runs.
    pub role: Role,
    /// The servers.
    pub infrastructure: Infrastructure,
    /// Its HTTP address: the API for the gateway, `/healthz` and `/metrics`
    /// (and the processor's `/admin/processor`) for the others.
    pub listen: SocketAddr,
    /// The gateway's admin address, for `/books` and `/metrics`:
    /// `127.0.0.1:8081` by default, loopback.
    pub admin_listen: SocketAddr,
    /// The processor's gRPC address.
    pub grpc: SocketAddr,
    /// The processor's URL, for payment.
    pub processor: String,
    /// Payment's HTTP URL (its `--listen` address), where the gateway
    /// tokenizes card numbers (required for the gateway).
    pub payment: Option<String>,
    /// The card vault's key, for payment; `None`: from
    /// [`PAYMENT_VAULT_KEY`](crate::payment::vault::KEY_VARIABLE).
    pub vault_key: Option<VaultKey>,
    /// The gateway's token buckets: by client address, for signing in,
    /// by user.
    pub limits: Limits,
    /// Payment's circuit breaker in front of the processor.
    pub breaker: palisade_circuit_breaker::Config,
    /// Keeps several systems apart on the same servers (tests running at
    /// once): schemas `<namespace>_<service>`, the stream
    /// `ORDERS_<NAMESPACE>`, Redis keys under it. Empty: none.
    pub namespace: String,
    /// The gateway's identity file: who may sign in, through which
    /// clients (required for the gateway).
    pub identity: Option<PathBuf>,
    /// The other processes' HTTP URLs (their `--listen`): the gateway's
    /// `/books` adds the books of the services they run (it reads no
    /// other service's tables), and its dashboard their `/metrics`.
    pub peers: Vec<String>,
    /// How long a process asked to stop (or whose consumer failed) lets
    /// the work under way finish before cutting it short: 25 s by
    /// default, within the 30 s an orchestrator usually allows. A client
    /// that never finishes sending its request would otherwise hold the
    /// stop for good.
    pub stop_grace: Duration,
}

impl ServeSettings {
    /// `role` on `infrastructure`, listening on `listen`; the processor's
    /// gRPC on `127.0.0.1:50051`, the gateway's and payment's defaults.
    #[must_use]
    pub fn new(role: Role, infrastructure: Infrastructure, listen: SocketAddr) -> Self {
        Self {
            role,
            infrastructure,
            listen,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            grpc: SocketAddr::from(([127, 0, 0, 1], 50051)),
            processor: "http://127.0.0.1:50051".to_owned(),
            payment: None,
            vault_key: None,
            limits: Limits::default(),
            breaker: card::breaker_config(),
            namespace: String::new(),
            identity: None,
            peers: Vec::new(),
            stop_grace: Duration::from_secs(25),
        }
    }

    /// The settings of a command run against the system in `namespace`
    /// on `infrastructure` (no process: its role and address are unused).
    ///
    /// # Errors
    ///
    /// `namespace` is not a name.
    pub(super) fn of_system(
        infrastructure: Infrastructure,
        namespace: &str,
    ) -> Result<Self, String> {
        let mut settings = Self::new(
            Role::Relay,
            infrastructure,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        settings.namespace = namespace.to_owned();
        settings.check()?;
        Ok(settings)
    }

    /// `service`'s schema.
    pub(super) fn schema(&self, service: &str) -> String {
        schema(&self.namespace, service)
    }

    /// `name` in the namespace, joined with `separator`.
    pub(super) fn namespaced(&self, name: &str, separator: &str) -> String {
        namespaced(&self.namespace, name, separator)
    }

    /// The stream's name.
    pub(super) fn stream(&self) -> String {
        if self.namespace.is_empty() {
            STREAM.to_owned()
        } else {
            format!("{STREAM}_{}", self.namespace.to_ascii_uppercase())
        }
    }

    /// The prefix of the sign-in store's keys in Redis.
    pub(super) fn sessions_prefix(&self) -> String {
        self.redis_prefix("auth")
    }

    /// The prefix of one `family` of the system's Redis keys: under the
    /// namespace and [`REDIS_ROOT`], where [`remove_namespace`] looks
    /// for them.
    ///
    /// [`remove_namespace`]: super::remove_namespace
    pub(super) fn redis_prefix(&self, family: &str) -> String {
        self.namespaced(&format!("{REDIS_ROOT}:{family}"), ":")
    }

    /// What every Redis key of the system in this namespace begins with
    /// (after a `{` where the key is hash-tagged).
    pub(super) fn redis_root(&self) -> String {
        self.namespaced(REDIS_ROOT, ":")
    }

    /// The first token of the stream's subjects.
    pub(super) fn subjects(&self) -> String {
        self.stream().to_ascii_lowercase()
    }

    pub(super) fn check(&self) -> Result<(), String> {
        let ns = &self.namespace;
        if !ns.is_empty() && !crate::db::is_identifier(ns) {
            return Err(format!(
                "namespace {ns:?}: lowercase letters, digits and `_`, starting with a letter"
            ));
        }
        Ok(())
    }
}

/// `service`'s schema in `namespace` (empty: none): `NS_service`.
pub(crate) fn schema(namespace: &str, service: &str) -> String {
    namespaced(namespace, service, "_")
}

/// `name` in `namespace` (empty: none), joined with `separator`.
fn namespaced(namespace: &str, name: &str, separator: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}{separator}{name}")
    }
}
