//! Payment's card vault: the only place a card number is kept, encrypted.
//!
//! The table `cards` of payment's database holds, per card, a token
//! (`card_` and 32 random hex digits), the last four digits, and the
//! number sealed with AES-256-GCM (a random 96-bit nonce per row, the
//! token as associated data, so a row's ciphertext does not open under
//! another row's token). The same number gets the same token: rows are
//! found by an HMAC-SHA256 of the number (`lookup`), so a request sent
//! again is the same request (its idempotency fingerprint holds the
//! token) and the table grows by card, not by order.
//!
//! Both keys come from one 32-byte [`VaultKey`] (HMAC-SHA256 of the key
//! over a label for each): from configuration (`PAYMENT_VAULT_KEY`, 64 hex
//! digits) on real infrastructure; the embedded default makes one in its
//! data directory on first start ([`VaultKey::load_or_create`]). A key
//! that does not open the cards already stored is refused when the vault
//! opens.
//!
//! The gateway tokenizes ([`Vault::tokenize`]) before an order is placed;
//! payment reveals the number ([`Vault::reveal`]) only to hand it to the
//! card processor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::card::{CardNumber, CardToken};
use crate::db::{Param, ServiceDb, Statements};
use crate::identity::hex;

/// The vault's table, in payment's database.
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS cards (token TEXT PRIMARY KEY, \
     lookup TEXT NOT NULL UNIQUE, last4 TEXT NOT NULL, nonce TEXT NOT NULL, \
     ciphertext TEXT NOT NULL, created_ms BIGINT NOT NULL)";

/// The environment variable `serve payment` reads its key from.
pub const KEY_VARIABLE: &str = "PAYMENT_VAULT_KEY";

/// The embedded default's key file, in its data directory.
pub const KEY_FILE: &str = "payment-vault.key";

/// Why the vault could not do what it was asked. No variant holds a card
/// number or a key.
#[derive(Debug)]
#[non_exhaustive]
pub enum VaultError {
    /// The key is missing, malformed, or does not open the cards stored.
    Key(String),
    /// No card has this token.
    UnknownToken,
    /// The card's row does not open with this key: tampered with, or
    /// sealed under another key.
    Unreadable,
    /// The database's error.
    Database(sqlx::Error),
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(problem) => write!(f, "card vault key: {problem}"),
            Self::UnknownToken => f.write_str("no card in the vault has this token"),
            Self::Unreadable => f.write_str(
                "the card's row does not decrypt with the vault's key \
                 (tampered with, or sealed under another key)",
            ),
            Self::Database(error) => write!(f, "card vault database: {error}"),
        }
    }
}

impl std::error::Error for VaultError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(error) => Some(error),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for VaultError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// The vault's 32-byte key; `Debug` shows nothing of it, and it is wiped
/// on drop.
#[derive(Clone)]
pub struct VaultKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKey(..)")
    }
}

impl VaultKey {
    /// A new random key.
    ///
    /// # Panics
    ///
    /// When the system's random source fails.
    #[must_use]
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0_u8; 32]);
        getrandom::fill(key.as_mut()).unwrap_or_else(|error| panic!("no randomness: {error}"));
        Self(key)
    }

    /// The key written as 64 hex digits.
    ///
    /// # Errors
    ///
    /// [`VaultError::Key`] for anything else (the message never quotes
    /// it).
    pub fn from_hex(text: &str) -> Result<Self, VaultError> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(VaultError::Key(format!(
                "must be 64 hex digits (32 bytes), not {} characters of that",
                text.len()
            )));
        }
        let mut key = Zeroizing::new([0_u8; 32]);
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).unwrap_or_default();
            *byte = u8::from_str_radix(pair, 16).unwrap_or_default();
        }
        Ok(Self(key))
    }

    /// The key as 64 hex digits (for its file, or its variable).
    #[must_use]
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(self.0.as_ref()))
    }

    /// The key from [`KEY_VARIABLE`].
    ///
    /// # Errors
    ///
    /// [`VaultError::Key`] when it is not set or not 64 hex digits.
    pub fn from_env() -> Result<Self, VaultError> {
        let value = Zeroizing::new(std::env::var(KEY_VARIABLE).map_err(|_| {
            VaultError::Key(format!(
                "payment needs {KEY_VARIABLE}: 64 hex digits, e.g. from `openssl rand -hex 32`"
            ))
        })?);
        Self::from_hex(&value).map_err(|error| VaultError::Key(format!("{KEY_VARIABLE}: {error}")))
    }

    /// The key in `path` (64 hex digits), made there first (readable by
    /// its owner only, 0600) when the file does not exist.
    ///
    /// # Errors
    ///
    /// [`VaultError::Key`] when the file cannot be read or written, or
    /// does not hold a key.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        let at =
            |error: &dyn std::fmt::Display| VaultError::Key(format!("{}: {error}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return Self::from_hex(&Zeroizing::new(text)).map_err(|error| at(&error));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(at(&error)),
        }
        let key = Self::generate();
        // Whole or not at all: a key file cut short stopped every start.
        crate::private_file::write(path, key.to_hex().as_bytes(), true)
            .map_err(|error| at(&error))?;
        Ok(key)
    }

    /// A key of its own for `label`: HMAC-SHA256 of the key over it.
    fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(label.as_bytes());
        let mut derived = Zeroizing::new([0_u8; 32]);
        derived.copy_from_slice(&mac.finalize().into_bytes());
        derived
    }
}

/// The keys a vault works with.
struct Keys {
    cipher: Aes256Gcm,
    lookup: Zeroizing<[u8; 32]>,
}

/// Payment's card vault, on payment's database.
#[derive(Clone)]
pub struct Vault {
    db: ServiceDb,
    keys: Arc<Keys>,
    /// The tokens of numbers seen, by lookup value: a card's row never
    /// changes once stored, so a number seen before costs no read.
    known: Arc<Mutex<HashMap<String, CardToken>>>,
}

/// The most tokens [`Vault`] keeps in memory; past it the memory starts
/// again empty (the database holds them all).
const KNOWN_TOKENS: usize = 100_000;

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The vault in `db` (whose tables include [`TABLE`]) with `key`,
    /// once the key is checked against the card stored last (if any).
    ///
    /// # Errors
    ///
    /// [`VaultError::Key`] when the key does not open that card, or the
    /// database's error.
    pub async fn open(db: ServiceDb, key: &VaultKey) -> Result<Self, VaultError> {
        let vault = Self::with_key(db, key);
        let newest: Option<(String,)> = vault
            .db
            .fetch_optional(
                "SELECT token FROM cards ORDER BY created_ms DESC LIMIT 1",
                &[],
            )
            .await?;
        if let Some((token,)) = newest {
            match vault.reveal(&token).await {
                Ok(_) => {}
                Err(VaultError::Unreadable) => {
                    return Err(VaultError::Key(
                        "it does not open the cards already in the vault \
                         (they were stored under another key)"
                            .to_owned(),
                    ));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(vault)
    }

    /// The vault with `key`, unchecked.
    fn with_key(db: ServiceDb, key: &VaultKey) -> Self {
        let encryption = key.derive("palisade order-system card vault: encryption");
        let cipher = <Aes256Gcm as KeyInit>::new_from_slice(encryption.as_ref())
            .unwrap_or_else(|_| unreachable!("a 32-byte key"));
        Self {
            db,
            keys: Arc::new(Keys {
                cipher,
                lookup: key.derive("palisade order-system card vault: lookup"),
            }),
            known: Arc::default(),
        }
    }

    /// The number's lookup value: HMAC-SHA256 under the lookup key, hex.
    fn lookup(&self, number: &CardNumber) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.keys.lookup.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(number.expose().as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The token of `number`: the one it has, or a new one (the number
    /// stored, sealed, under it).
    ///
    /// # Errors
    ///
    /// The database's error.
    ///
    /// # Panics
    ///
    /// When the system's random source fails.
    pub async fn tokenize(&self, number: &CardNumber) -> Result<CardToken, VaultError> {
        let lookup = self.lookup(number);
        if let Some(known) = self.known().get(&lookup) {
            return Ok(known.clone());
        }
        // A number this process has not seen costs one read.
        if let Some(stored) = self.token_of(&lookup).await? {
            return Ok(self.remember(lookup, stored));
        }
        let token = format!("card_{}", crate::identity::random_secret());
        let mut nonce = [0_u8; 12];
        getrandom::fill(&mut nonce).unwrap_or_else(|error| panic!("no randomness: {error}"));
        let ciphertext = self
            .keys
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: number.expose().as_bytes(),
                    aad: token.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Unreadable)?;
        self.db
            .execute(
                "INSERT INTO cards (token, lookup, last4, nonce, ciphertext, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (lookup) DO NOTHING",
                &[
                    Param::Text(&token),
                    Param::Text(&lookup),
                    Param::Text(number.last4()),
                    Param::Text(&hex(&nonce)),
                    Param::Text(&hex(&ciphertext)),
                    Param::Int(crate::orders::now_ms()),
                ],
            )
            .await?;
        // Ours, or the one a concurrent request stored first.
        let stored = self
            .token_of(&lookup)
            .await?
            .ok_or_else(|| VaultError::Database(sqlx::Error::RowNotFound))?;
        Ok(self.remember(lookup, stored))
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, CardToken>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `token` as the one stored for `lookup`, and returns it.
    fn remember(&self, lookup: String, token: CardToken) -> CardToken {
        let mut known = self.known();
        // Full: started anew, the old tokens freed once the lock is let
        // go (100,000 of them freed under it held every tokenization up).
        let forgotten = (known.len() >= KNOWN_TOKENS).then(|| std::mem::take(&mut *known));
        known.insert(lookup, token.clone());
        drop(known);
        drop(forgotten);
        token
    }

    /// The token stored for the number whose lookup is `lookup`, if any.
    async fn token_of(&self, lookup: &str) -> Result<Option<CardToken>, VaultError> {
        let row: Option<(String, String)> = self
            .db
            .fetch_optional(
                "SELECT token, last4 FROM cards WHERE lookup = $1",
                &[Param::Text(lookup)],
            )
            .await?;
        Ok(row.map(|(token, last4)| CardToken { token, last4 }))
    }

    /// The number stored under `token`.
    ///
    /// # Errors
    ///
    /// [`VaultError::UnknownToken`], [`VaultError::Unreadable`] (the row
    /// tampered with, or sealed under another key), or the database's
    /// error.
    pub async fn reveal(&self, token: &str) -> Result<CardNumber, VaultError> {
        self.reveal_all(&[token])
            .await?
            .remove(token)
            .unwrap_or(Err(VaultError::UnknownToken))
    }

    /// The numbers stored under `tokens`, read in one query: for each
    /// token, its number, [`VaultError::UnknownToken`] or
    /// [`VaultError::Unreadable`].
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn reveal_all(
        &self,
        tokens: &[&str],
    ) -> Result<HashMap<String, Result<CardNumber, VaultError>>, VaultError> {
        let mut revealed: HashMap<String, Result<CardNumber, VaultError>> = tokens
            .iter()
            .map(|token| ((*token).to_owned(), Err(VaultError::UnknownToken)))
            .collect();
        if revealed.is_empty() {
            return Ok(revealed);
        }
        let wanted: Vec<&String> = revealed.keys().collect();
        let placeholders = (1..=wanted.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let query =
            format!("SELECT token, nonce, ciphertext FROM cards WHERE token IN ({placeholders})");
        let params: Vec<Param<'_>> = wanted.iter().map(|token| Param::Text(token)).collect();
        let rows: Vec<(String, String, String)> = self.db.fetch_all(&query, &params).await?;
        for (token, nonce, ciphertext) in rows {
            let number = self.unseal(&token, &nonce, &ciphertext);
            revealed.insert(token, number);
        }
        Ok(revealed)
    }

    /// Decrypts the row of `token`.
    fn unseal(&self, token: &str, nonce: &str, ciphertext: &str) -> Result<CardNumber, VaultError> {
        let nonce: [u8; 12] = unhex(nonce)
            .and_then(|nonce| nonce.try_into().ok())
            .ok_or(VaultError::Unreadable)?;
        let ciphertext = unhex(ciphertext).ok_or(VaultError::Unreadable)?;
        let plain = Zeroizing::new(
            self.keys
                .cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: token.as_bytes(),
                    },
                )
                .map_err(|_| VaultError::Unreadable)?,
        );
        std::str::from_utf8(&plain)
            .ok()
            .and_then(|digits| CardNumber::parse(digits).ok())
            .ok_or(VaultError::Unreadable)
    }
}

/// Hex digits back to bytes; `None` unless they are pairs of hex digits.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn payment_db() -> (ServiceDb, Dir) {
        let dir = std::env::temp_dir().join(format!("palisade-card-vault-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let db = ServiceDb::open_sqlite(&dir, "payment", &[TABLE])
            .await
            .unwrap();
        (db, Dir(dir))
    }

    fn card(digits: &str) -> CardNumber {
        CardNumber::parse(digits).unwrap()
    }

    async fn execute(db: &ServiceDb, sql: &str) {
        db.execute(sql, &[]).await.unwrap();
    }

    #[tokio::test]
    async fn a_card_goes_in_as_a_token_and_comes_out_whole() {
        let (db, _dir) = payment_db().await;
        let vault = Vault::open(db.clone(), &VaultKey::generate())
            .await
            .unwrap();
        let good = vault.tokenize(&card("4242424242424242")).await.unwrap();
        assert_eq!(good.last4, "4242");
        assert!(good.token.starts_with("card_"), "{good:?}");
        assert_eq!(good.token.len(), 5 + 32);
        assert!(good.token[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            vault.tokenize(&card("4242424242424242")).await.unwrap(),
            good,
            "one token per card"
        );
        let other = vault.tokenize(&card("4000000000000002")).await.unwrap();
        assert_ne!(other.token, good.token);
        assert_eq!(
            vault.reveal(&good.token).await.unwrap(),
            card("4242424242424242")
        );
        assert_eq!(
            vault.reveal(&other.token).await.unwrap(),
            card("4000000000000002")
        );
        // What the table holds: no digits of the number.
        let rows: Vec<(String, String, String)> = db
            .fetch_all("SELECT lookup, nonce, ciphertext FROM cards", &[])
            .await
            .unwrap();
        for row in rows {
            assert!(!format!("{row:?}").contains("42424242"), "{row:?}");
        }
    }

    /// A number tokenized before is answered from memory; a vault that
    /// did not see it (another process) reads the token stored.
    #[tokio::test]
    async fn a_number_seen_before_is_tokenized_without_the_database() {
        let (db, dir) = payment_db().await;
        let key = VaultKey::generate();
        let vault = Vault::open(db.clone(), &key).await.unwrap();
        let good = vault.tokenize(&card("4242424242424242")).await.unwrap();
        let elsewhere = Vault::open(
            ServiceDb::open_sqlite(&dir.0, "payment", &[TABLE])
                .await
                .unwrap(),
            &key,
        )
        .await
        .unwrap();
        assert_eq!(
            elsewhere.tokenize(&card("4242424242424242")).await.unwrap(),
            good,
            "the stored token"
        );
        db.close().await;
        assert_eq!(
            vault.tokenize(&card("4242424242424242")).await.unwrap(),
            good
        );
        assert!(matches!(
            vault.tokenize(&card("4000000000000002")).await,
            Err(VaultError::Database(_))
        ));
    }

    #[tokio::test]
    async fn a_rounds_cards_are_revealed_in_one_read_each_token_with_its_own_answer() {
        let (db, _dir) = payment_db().await;
        let vault = Vault::open(db.clone(), &VaultKey::generate())
            .await
            .unwrap();
        let good = vault.tokenize(&card("4242424242424242")).await.unwrap();
        let other = vault.tokenize(&card("4000000000000002")).await.unwrap();
        let spoiled = vault.tokenize(&card("5555555555554444")).await.unwrap();
        execute(
            &db,
            &format!(
                "UPDATE cards SET ciphertext = ciphertext || '00' WHERE token = '{}'",
                spoiled.token
            ),
        )
        .await;
        let unknown = "card_00000000000000000000000000000000";
        let revealed = vault
            .reveal_all(&[
                &good.token,
                unknown,
                &other.token,
                &good.token,
                &spoiled.token,
            ])
            .await
            .unwrap();
        assert_eq!(revealed.len(), 4, "one answer a token");
        assert_eq!(
            revealed[&good.token].as_ref().unwrap(),
            &card("4242424242424242")
        );
        assert_eq!(
            revealed[&other.token].as_ref().unwrap(),
            &card("4000000000000002")
        );
        assert!(matches!(revealed[unknown], Err(VaultError::UnknownToken)));
        assert!(matches!(
            revealed[&spoiled.token],
            Err(VaultError::Unreadable)
        ));
        assert!(vault.reveal_all(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn another_key_does_not_open_the_vault() {
        let (db, _dir) = payment_db().await;
        let vault = Vault::open(db.clone(), &VaultKey::generate())
            .await
            .unwrap();
        let token = vault.tokenize(&card("4242424242424242")).await.unwrap();

        let error = Vault::open(db.clone(), &VaultKey::generate())
            .await
            .unwrap_err();
        assert!(matches!(error, VaultError::Key(_)), "{error:?}");
        assert!(
            error.to_string().contains("stored under another key"),
            "{error}"
        );
        let unchecked = Vault::with_key(db, &VaultKey::generate());
        let error = unchecked.reveal(&token.token).await.unwrap_err();
        assert!(matches!(error, VaultError::Unreadable), "{error:?}");
        assert!(error.to_string().contains("does not decrypt"), "{error}");
    }

    #[tokio::test]
    async fn a_tampered_or_swapped_row_is_refused() {
        let (db, _dir) = payment_db().await;
        let vault = Vault::open(db.clone(), &VaultKey::generate())
            .await
            .unwrap();
        let good = vault.tokenize(&card("4242424242424242")).await.unwrap();
        let other = vault.tokenize(&card("4000000000000002")).await.unwrap();

        // One bit of the ciphertext flipped.
        let (ciphertext,): (String,) = db
            .fetch_one(
                "SELECT ciphertext FROM cards WHERE token = $1",
                &[Param::Text(&good.token)],
            )
            .await
            .unwrap();
        let mut bytes = unhex(&ciphertext).unwrap();
        bytes[0] ^= 1;
        execute(
            &db,
            &format!(
                "UPDATE cards SET ciphertext = '{}' WHERE token = '{}'",
                hex(&bytes),
                good.token
            ),
        )
        .await;
        assert!(matches!(
            vault.reveal(&good.token).await,
            Err(VaultError::Unreadable)
        ));

        // Another row's nonce and ciphertext under this token: the token
        // is the associated data, so they do not open.
        execute(
            &db,
            &format!(
                "UPDATE cards SET nonce = (SELECT nonce FROM cards WHERE token = '{0}'), \
                 ciphertext = (SELECT ciphertext FROM cards WHERE token = '{0}') \
                 WHERE token = '{1}'",
                other.token, good.token
            ),
        )
        .await;
        assert!(matches!(
            vault.reveal(&good.token).await,
            Err(VaultError::Unreadable)
        ));
        assert_eq!(
            vault.reveal(&other.token).await.unwrap(),
            card("4000000000000002")
        );
    }

    #[tokio::test]
    async fn an_unknown_token_is_said_to_be_unknown() {
        let (db, _dir) = payment_db().await;
        let vault = Vault::open(db, &VaultKey::generate()).await.unwrap();
        let error = vault
            .reveal("card_00000000000000000000000000000000")
            .await
            .unwrap_err();
        assert!(matches!(error, VaultError::UnknownToken), "{error:?}");
        assert_eq!(error.to_string(), "no card in the vault has this token");
    }

    #[test]
    fn keys_are_64_hex_digits_and_their_file_is_private() {
        let key = VaultKey::generate();
        let again = VaultKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.to_hex(), key.to_hex());
        assert_eq!(format!("{key:?}"), "VaultKey(..)");
        for bad in ["", "abc", &"g".repeat(64), &"0".repeat(63), &"0".repeat(66)] {
            let error = VaultKey::from_hex(bad).unwrap_err().to_string();
            assert!(error.contains("must be 64 hex digits"), "{error}");
        }

        let dir =
            Dir(std::env::temp_dir().join(format!("palisade-vault-key-{}", fastrand::u64(..))));
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(KEY_FILE);
        let made = VaultKey::load_or_create(&path).unwrap();
        let read = VaultKey::load_or_create(&path).unwrap();
        assert_eq!(made.to_hex(), read.to_hex(), "made once, then read");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        let error = VaultKey::load_or_create(&path).unwrap_err().to_string();
        assert!(
            error.contains(KEY_FILE) && error.contains("64 hex digits"),
            "{error}"
        );
    }
}
