//! Who may sign in: users with Argon2id password hashes and roles, and the
//! OAuth clients allowed to ask for a sign-in, with their exact redirect
//! URIs.
//!
//! An identity file is JSON:
//!
//! ```json
//! {
//!   "users": [
//!     { "name": "alice", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$…" },
//!     { "name": "ops", "password_hash": "$argon2id$…", "roles": ["operator"] }
//!   ],
//!   "clients": [
//!     { "client_id": "order-system-cli", "redirect_uris": ["http://localhost/callback"] }
//!   ]
//! }
//! ```
//!
//! Roles are data: whoever the file grants [`Role::Operator`] is an
//! operator, whatever the name. Passwords are checked against PHC strings
//! made by [`hash_password`] (Argon2id, m = 19 MiB, t = 2, p = 1: OWASP's
//! recommended minimum), on tokio's blocking threads so that many sign-ins
//! at once do not stall the runtime.
//!
//! [`seed_demo`] writes an identity with demo users and generated
//! passwords into a directory (the embedded default's data directory), and
//! the passwords into a [`Credentials`] file beside it, readable by its
//! owner only, where the `token` and `load` commands find them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// The identity file's name in a data directory.
pub const IDENTITY_FILE: &str = "identity.json";
/// The demo users' passwords' file name in a data directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// The OAuth client the `token` and `load` commands sign in as.
pub const CLI_CLIENT_ID: &str = "order-system-cli";
/// Where the auth service sends the CLI client back; the commands read
/// the code from the redirect instead of following it.
pub const CLI_REDIRECT_URI: &str = "http://localhost/callback";

/// A role a user may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May use `/admin/*` (the card processor's faults).
    Operator,
}

/// The signed-in user a token stands for, put in the request's extensions
/// by the bearer check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user's name.
    pub user: String,
    /// The roles granted at sign-in.
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether `role` was granted.
    #[must_use]
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// What is wrong with an identity or credentials file, or writing one.
#[derive(Debug)]
pub struct IdentityError(String);

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

impl IdentityError {
    fn at(path: &Path, error: impl std::fmt::Display) -> Self {
        Self(format!("{}: {error}", path.display()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    client_id: String,
    redirect_uris: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    users: Vec<UserEntry>,
    clients: Vec<ClientEntry>,
}

/// The users and OAuth clients, checked when read.
#[derive(Clone)]
pub struct Identity {
    users: Arc<HashMap<String, UserEntry>>,
    clients: Arc<HashMap<String, Vec<String>>>,
}

/// Names only: no hash in logs.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("clients", &self.clients)
            .finish()
    }
}

/// The password hasher: Argon2id, m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .unwrap_or_else(|_| unreachable!("valid Argon2 parameters"));
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The most memory (KiB), passes and lanes a stored hash may ask of a
/// sign-in: its check runs with the hash's own costs, on one of a few
/// hashing threads, so a hash past these held a thread for days, or ran
/// the host out of memory, at each sign-in.
const MOST_COSTS: (u32, u32, u32) = (256 * 1024, 16, 8);

/// Whether `hash` can be checked at all (its costs readable, its output
/// there) and at a sign-in's cost.
fn check_costs(hash: &argon2::password_hash::phc::PasswordHash) -> Result<(), String> {
    let params = Params::try_from(hash).map_err(|error| format!("costs: {error}"))?;
    if hash.hash.is_none() {
        return Err("holds no hash: nobody could sign in".to_owned());
    }
    let (memory, passes, lanes) = MOST_COSTS;
    if params.m_cost() > memory || params.t_cost() > passes || params.p_cost() > lanes {
        return Err(format!(
            "asks m={}, t={}, p={}: past m={memory} (KiB), t={passes}, p={lanes}, what a sign-in may take",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// An Argon2id PHC string of `password`, with a random salt. Slow on
/// purpose (tens of milliseconds): call it off the runtime's workers.
///
/// # Errors
///
/// The system's random source failed.
pub fn hash_password(password: &str) -> Result<String, IdentityError> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| IdentityError(format!("cannot hash a password: {error}")))
}

/// Sign-ins that may wait for a hashing place, for each place: past that,
/// a sign-in is refused at once ([`Busy`]). Each waits its turn behind
/// those before it (tens of milliseconds a hash), so this bounds how long
/// a real sign-in waits behind a crowd of made-up ones (a client with many
/// addresses, each within its own sign-in limit, queued thousands).
const WAITING_PER_PLACE: usize = 16;

/// Every hashing place is taken and as many sign-ins wait as may: this one
/// is refused rather than queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many sign-ins at once; try again in a moment")
    }
}

impl std::error::Error for Busy {}

/// The places where passwords are hashed, on tokio's blocking threads:
/// each hash takes 19 MiB, so a crowd signing in costs a queue, not a
/// thread and 19 MiB each; and the runtime's workers stay free.
#[derive(Debug)]
struct Hashers {
    places: tokio::sync::Semaphore,
    /// Callers waiting for a place now.
    waiting: std::sync::atomic::AtomicUsize,
    /// The most that may wait, for a bounded caller.
    most_waiting: usize,
}

impl Hashers {
    fn new(places: usize) -> Self {
        Self {
            places: tokio::sync::Semaphore::new(places),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            most_waiting: places.saturating_mul(WAITING_PER_PLACE),
        }
    }

    /// Runs `work` (hashing) in a place of its own once there is one; with
    /// `bounded`, [`Busy`] at once when as many callers wait as may. The
    /// place is the hash's until it ends: a caller that leaves (its client
    /// gone, a timeout) does not end the blocking work it started, and a
    /// place given back then let a crowd of cancelled sign-ins hash at
    /// once.
    async fn run<T: Send + 'static>(
        &'static self,
        bounded: bool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        use std::sync::atomic::Ordering;

        /// A caller waiting, counted until it has a place or leaves.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }

        let waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.most_waiting
            && bounded
            && self.places.available_permits() == 0
        {
            return Err(Busy);
        }
        let permit = self
            .places
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the hashers' semaphore is never closed"));
        drop(waiting);
        let work = move || {
            let _place = permit;
            work()
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(done) => Ok(done),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// Runs `work` (hashing) in the process's hashing places, one per core;
/// as [`Hashers::run`] says.
async fn hashing<T: Send + 'static>(
    bounded: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Busy> {
    static HASHERS: OnceLock<Hashers> = OnceLock::new();
    HASHERS
        .get_or_init(|| Hashers::new(std::thread::available_parallelism().map_or(2, usize::from)))
        .run(bounded, work)
        .await
}

/// A hash no password matches, checked for unknown users so that they
/// take as long as known ones.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_secret()).unwrap_or_default())
}

/// 128 random bits as 32 hex digits.
///
/// # Panics
///
/// When the system's random source fails.
#[must_use]
pub fn random_secret() -> String {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_else(|error| panic!("no randomness: {error}"));
    hex(&bytes)
}

/// `bytes` as lowercase hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

impl Identity {
    /// Reads an identity from its JSON text.
    ///
    /// # Errors
    ///
    /// Not JSON of the documented shape, an unknown role, a hash that is
    /// not an Argon2id PHC string, a user or client named twice or with an
    /// empty name, a client without redirect URIs or with one that is not
    /// an absolute URL without a fragment.
    pub fn from_json(text: &str) -> Result<Self, IdentityError> {
        let file: IdentityFile = serde_json::from_str(text)
            .map_err(|error| IdentityError(format!("not an identity file: {error}")))?;
        let mut users = HashMap::new();
        for user in file.users {
            if user.name.is_empty() || user.name.len() > 64 {
                return Err(IdentityError(format!(
                    "user {:?}: a name is 1 to 64 characters",
                    user.name
                )));
            }
            let hash = argon2::password_hash::phc::PasswordHash::new(&user.password_hash).map_err(
                |error| IdentityError(format!("user {:?}: password_hash: {error}", user.name)),
            )?;
            if hash.algorithm.as_str() != "argon2id" {
                return Err(IdentityError(format!(
                    "user {:?}: password_hash must be Argon2id, not {}",
                    user.name, hash.algorithm
                )));
            }
            check_costs(&hash).map_err(|why| {
                IdentityError(format!("user {:?}: password_hash {why}", user.name))
            })?;
            let name = user.name.clone();
            if users.insert(name.clone(), user).is_some() {
                return Err(IdentityError(format!("user {name:?} is listed twice")));
            }
        }
        let mut clients = HashMap::new();
        for client in file.clients {
            let id = client.client_id;
            if id.is_empty() || client.redirect_uris.is_empty() {
                return Err(IdentityError(format!(
                    "client {id:?}: a client_id and at least one redirect URI are required"
                )));
            }
            for uri in &client.redirect_uris {
                let parsed = url::Url::parse(uri)
                    .map_err(|error| IdentityError(format!("client {id:?}: {uri:?}: {error}")))?;
                if parsed.fragment().is_some() {
                    return Err(IdentityError(format!(
                        "client {id:?}: {uri:?}: a redirect URI has no fragment"
                    )));
                }
            }
            if clients.insert(id.clone(), client.redirect_uris).is_some() {
                return Err(IdentityError(format!("client {id:?} is listed twice")));
            }
        }
        Ok(Self {
            users: Arc::new(users),
            clients: Arc::new(clients),
        })
    }

    /// Reads the identity file at `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or as [`from_json`](Self::from_json), the
    /// path named in the message.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|error| IdentityError::at(path, error))?;
        Self::from_json(&text).map_err(|error| IdentityError::at(path, error))
    }

    /// Whether `client_id` is registered with exactly `redirect_uri`.
    #[must_use]
    pub fn allows_redirect(&self, client_id: &str, redirect_uri: &str) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|uris| uris.iter().any(|uri| uri == redirect_uri))
    }

    /// The user `name` with its roles, if `password` is theirs. The check
    /// runs on a blocking thread (one per core at once), and takes as long
    /// for an unknown user.
    ///
    /// # Errors
    ///
    /// [`Busy`] when every place is taken and as many sign-ins wait as
    /// may (16 a core).
    pub async fn verify(&self, name: &str, password: &str) -> Result<Option<Principal>, Busy> {
        let user = self.users.get(name).cloned();
        let password = password.to_owned();
        hashing(true, move || {
            let hash = user
                .as_ref()
                .map_or_else(|| decoy(), |user| user.password_hash.as_str());
            let matches = argon2().verify_password(password.as_bytes(), hash).is_ok();
            user.filter(|_| matches).map(|user| Principal {
                user: user.name,
                roles: user.roles,
            })
        })
        .await
    }
}

/// One user's name and password in clear, for a client that signs in.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The user's name.
    pub name: String,
    /// The password.
    pub password: String,
    /// The roles the identity grants them (which one the operator is).
    #[serde(default)]
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Users' passwords in clear, as [`seed_demo`] writes them: a JSON array of
/// `{"name", "password", "roles"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credentials(pub Vec<Credential>);

impl Credentials {
    /// Reads a credentials file.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not a JSON array of credentials, the
    /// path named in the message.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|error| IdentityError::at(path, error))?;
        serde_json::from_str(&text)
            .map_err(|error| IdentityError::at(path, format!("not a credentials file: {error}")))
    }

    /// The credential of `name`.
    #[must_use]
    pub fn of(&self, name: &str) -> Option<&Credential> {
        self.0.iter().find(|credential| credential.name == name)
    }

    /// The first user granted `role`.
    #[must_use]
    pub fn with_role(&self, role: Role) -> Option<&Credential> {
        self.0
            .iter()
            .find(|credential| credential.roles.contains(&role))
    }

    /// The users granted no role at all.
    #[must_use]
    pub fn without_roles(&self) -> Vec<&Credential> {
        self.0
            .iter()
            .filter(|credential| credential.roles.is_empty())
            .collect()
    }
}

/// What [`seed_demo`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// The identity file.
    pub identity: PathBuf,
    /// The demo users' passwords.
    pub credentials: PathBuf,
    /// Whether they were made now (first start).
    pub created: bool,
}

/// Makes sure `dir` holds an identity with demo users: `alice`, `bob`,
/// `operator` (granted [`Role::Operator`]) and `load_users` users named
/// `load-NN` for the load command, each with a generated password, and the
/// CLI client ([`CLI_CLIENT_ID`]). The passwords go to
/// [`CREDENTIALS_FILE`], the hashes to [`IDENTITY_FILE`], both readable by
/// their owner only. An identity already there is kept as it is.
///
/// # Errors
///
/// The files cannot be written, or hashing failed.
pub async fn seed_demo(dir: &Path, load_users: usize) -> Result<Seeded, IdentityError> {
    let seeded = Seeded {
        identity: dir.join(IDENTITY_FILE),
        credentials: dir.join(CREDENTIALS_FILE),
        created: false,
    };
    if seeded.identity.exists() {
        return Ok(seeded);
    }
    let mut credentials = Vec::new();
    for name in ["alice", "bob"] {
        credentials.push((name.to_owned(), Vec::new()));
    }
    credentials.push(("operator".to_owned(), vec![Role::Operator]));
    for n in 0..load_users {
        credentials.push((format!("load-{n:02}"), Vec::new()));
    }
    let credentials: Vec<Credential> = credentials
        .into_iter()
        .map(|(name, roles)| Credential {
            name,
            password: random_secret(),
            roles,
        })
        .collect();
    let mut hashes = tokio::task::JoinSet::new();
    for credential in &credentials {
        let credential = credential.clone();
        hashes.spawn(hashing(false, move || {
            hash_password(&credential.password).map(|password_hash| UserEntry {
                name: credential.name,
                password_hash,
                roles: credential.roles,
            })
        }));
    }
    let mut users = Vec::new();
    while let Some(user) = hashes.join_next().await {
        let user = user.map_err(|error| IdentityError(error.to_string()))?;
        users.push(user.unwrap_or_else(|Busy| unreachable!("an unbounded caller is never busy"))?);
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let identity = IdentityFile {
        users,
        clients: vec![ClientEntry {
            client_id: CLI_CLIENT_ID.to_owned(),
            redirect_uris: vec![CLI_REDIRECT_URI.to_owned()],
        }],
    };
    // The passwords first: an identity without them would lock everyone
    // out; passwords without an identity are made again next start.
    write_private(&seeded.credentials, &Credentials(credentials))?;
    write_private(&seeded.identity, &identity)?;
    Ok(Seeded {
        created: true,
        ..seeded
    })
}

/// Writes `value` as JSON to `path`, readable and writable by its owner
/// only (0600), whole or not at all ([`crate::private_file::write`]).
fn write_private(path: &Path, value: &impl Serialize) -> Result<(), IdentityError> {
    let json = serde_json::to_vec_pretty(value).map_err(|error| IdentityError::at(path, error))?;
    crate::private_file::write(path, &json, false).map_err(|error| IdentityError::at(path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks the hashes waiting on it until opened, or until any of its
    /// handles is dropped (a failed assertion must not leave blocking
    /// threads waiting for ever).
    #[derive(Clone, Default)]
    struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

    impl Gate {
        fn wait(&self) {
            let (open, opened) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
        }

        fn open(&self) {
            let (open, opened) = &*self.0;
            *open.lock().unwrap() = true;
            opened.notify_all();
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            self.open();
        }
    }

    /// Hashes whose callers left (their clients gone) keep their places
    /// until they end: no more run at once than there are places.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_whose_caller_left_keeps_its_place_until_it_ends() {
        let places = std::thread::available_parallelism().map_or(2, usize::from);
        let (tell, mut started) = tokio::sync::mpsc::unbounded_channel();
        let gate = Gate::default();
        let caller = |n: usize| {
            let (tell, gate) = (tell.clone(), gate.clone());
            tokio::spawn(hashing(false, move || {
                let _ = tell.send(n);
                gate.wait();
            }))
        };
        for n in 0..places {
            let left = caller(n);
            assert_eq!(started.recv().await, Some(n));
            left.abort();
            let _ = left.await;
        }
        let last = caller(places);
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(200), started.recv()).await;
        assert!(early.is_err(), "a hash began while every place was taken");
        gate.open();
        assert_eq!(started.recv().await, Some(places));
        last.await.unwrap().unwrap();
    }

    /// A sign-in finding every place taken and as many waiting as may is
    /// refused at once: the queue had no bound, and a crowd of made-up
    /// sign-ins (each address within its own limit) held every real one
    /// behind it. Those waiting still get their turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sign_in_past_a_full_queue_is_refused_at_once() {
        use std::sync::atomic::Ordering;

        let hashers: &'static Hashers = Box::leak(Box::new(Hashers::new(1)));
        let gate = Gate::default();
        let (tell, mut started) = tokio::sync::mpsc::unbounded_channel();
        let first = {
            let gate = gate.clone();
            tokio::spawn(hashers.run(true, move || {
                let _ = tell.send(());
                gate.wait();
            }))
        };
        assert_eq!(started.recv().await, Some(()), "the one place is taken");
        let queued: Vec<_> = (0..WAITING_PER_PLACE)
            .map(|_| tokio::spawn(hashers.run(true, || ())))
            .collect();
        while hashers.waiting.load(Ordering::Acquire) < WAITING_PER_PLACE {
            tokio::task::yield_now().await;
        }
        assert_eq!(hashers.run(true, || ()).await, Err(Busy));
        gate.open();
        first.await.unwrap().unwrap();
        for waiting in queued {
            waiting.await.unwrap().unwrap();
        }
        assert_eq!(hashers.run(true, || 7).await, Ok(7));
    }

    fn user(name: &str, roles: &str) -> String {
        let hash = hash_password("pw").unwrap();
        format!(r#"{{"name":"{name}","password_hash":"{hash}","roles":{roles}}}"#)
    }

    /// A hash is checked with its own costs: one asking days of a hashing
    /// thread, or gigabytes, or holding no hash at all, is refused when
    /// the file is read (it was taken, and hung sign-in or locked its
    /// user out).
    #[test]
    fn a_hash_a_sign_in_could_not_check_is_refused() {
        let ours = hash_password("pw").unwrap();
        assert!(ours.contains("$m=19456,t=2,p=1$"), "{ours}");
        let (head, _hash) = ours.rsplit_once('$').unwrap();
        for (bad, why) in [
            (ours.replace("t=2,", "t=4000000000,"), "t=4000000000"),
            (ours.replace("m=19456,", "m=4194304,"), "m=4194304"),
            (ours.replace("p=1$", "p=64$"), "p=64"),
            (head.to_owned(), "holds no hash"),
        ] {
            let file = format!(
                r#"{{"users":[{{"name":"a","password_hash":"{bad}","roles":[]}}],"clients":[]}}"#
            );
            let error = Identity::from_json(&file).unwrap_err().to_string();
            assert!(
                error.contains("password_hash") && error.contains(why),
                "{bad}: {error}"
            );
        }
        let file = format!(r#"{{"users":[{}],"clients":[]}}"#, user("a", "[]"));
        assert!(Identity::from_json(&file).is_ok());
    }

    #[test]
    fn bad_identity_files_say_what_is_wrong() {
        let client = r#"{"client_id":"c","redirect_uris":["http://localhost/cb"]}"#;
        let cases = [
            ("not json".to_owned(), "not an identity file"),
            (
                format!(
                    r#"{{"users":[{}],"clients":[]}}"#,
                    user("a", r#"["admin"]"#)
                ),
                "unknown variant `admin`",
            ),
            (
                r#"{"users":[{"name":"a","password_hash":"x"}],"clients":[]}"#.to_owned(),
                "user \"a\": password_hash",
            ),
            (
                format!(
                    r#"{{"users":[{},{}],"clients":[]}}"#,
                    user("a", "[]"),
                    user("a", "[]")
                ),
                "listed twice",
            ),
            (
                r#"{"users":[],"clients":[{"client_id":"c","redirect_uris":[]}]}"#.to_owned(),
                "at least one redirect URI",
            ),
            (
                r#"{"users":[],"clients":[{"client_id":"c","redirect_uris":["/cb"]}]}"#.to_owned(),
                "client \"c\": \"/cb\"",
            ),
            (
                format!(r#"{{"users":[],"clients":[{client}],"x":1}}"#),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = Identity::from_json(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        let good = format!(
            r#"{{"users":[{}],"clients":[{client}]}}"#,
            user("ops", r#"["operator"]"#)
        );
        let identity = Identity::from_json(&good).unwrap();
        let shown = format!("{identity:?}");
        assert!(
            shown.contains("ops") && !shown.contains("argon2"),
            "{shown}"
        );
        assert!(identity.allows_redirect("c", "http://localhost/cb"));
        assert!(!identity.allows_redirect("c", "http://localhost/cb/"));
        assert!(!identity.allows_redirect("d", "http://localhost/cb"));
    }

    #[tokio::test]
    async fn a_password_is_checked_against_its_hash() {
        let identity = Identity::from_json(&format!(
            r#"{{"users":[{}],"clients":[]}}"#,
            user("ops", r#"["operator"]"#)
        ))
        .unwrap();
        let principal = identity.verify("ops", "pw").await.unwrap().unwrap();
        assert!(principal.has(Role::Operator));
        assert_eq!(identity.verify("ops", "wrong").await, Ok(None));
        assert_eq!(identity.verify("nobody", "pw").await, Ok(None));
    }
}
