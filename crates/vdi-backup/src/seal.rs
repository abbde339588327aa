//! Encryption at rest: a stored stream sealed in authenticated chunks (AES-256-GCM), the
//! keys it is sealed with, and where they come from (a key file or a passphrase through
//! Argon2id). The layout is specified in `docs/backup-format.md` ("Encrypted streams").
//!
//! The stored stream (compressed first, if at all) is cut into chunks of at most
//! `chunk_bytes`; each is sealed with a nonce made of the device index and the chunk's
//! number, and authenticated together with the container header (which names the backup
//! and the device), its own number, its length and whether it is the last: so a chunk
//! flipped, moved, dropped or taken from another stream or another backup fails to open,
//! and so does a stream cut short (no last chunk) or extended (bytes after it). The key
//! of each backup is derived from the master key and the backup's id; the manifest keeps
//! only a key check value (and, for a passphrase, the KDF's salt and parameters), never
//! a key.
//!
//! ```
//! use std::io::{Read, Write};
//! use vdi_backup::seal::{Keys, Secret, SealReader, SealWriter};
//! let secret = Secret::key([7u8; 32]);
//! let id = [1u8; 16];
//! let (keys, info) = Keys::create(&secret, id).unwrap();
//! let mut w = SealWriter::new(Vec::new(), std::sync::Arc::new(keys), 0).unwrap();
//! w.write_all(b"hello").unwrap();
//! let sealed = w.finish().unwrap();
//! let keys = Keys::unlock(&secret, &info, id).unwrap();
//! let mut r = SealReader::new(&sealed[..], std::sync::Arc::new(keys), 0).unwrap();
//! let mut out = Vec::new();
//! r.read_to_end(&mut out).unwrap();
//! assert_eq!(out, b"hello");
//! ```

use std::io::{self, Read, Write};
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// The magic that opens an encrypted stream file.
pub const MAGIC: [u8; 8] = *b"VDI-SEAL";
/// The container version this code writes and reads.
pub const VERSION: u32 = 1;
/// The only algorithm: AES-256-GCM (code 1 in the container header).
pub const ALGORITHM: &str = "aes-256-gcm";
/// Bytes of the container header.
pub const HEADER_LEN: usize = 40;
/// Bytes of a chunk's authentication tag.
pub const TAG_LEN: usize = 16;
/// The record word's bit that marks the last chunk.
const FINAL: u32 = 1 << 31;
/// Plaintext bytes of a full chunk.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Chunk sizes a reader accepts.
const CHUNK_RANGE: std::ops::RangeInclusive<u32> = 4096..=(16 << 20);

/// Argon2id parameters for a new passphrase-protected backup: 64 MiB, 3 passes, 1 lane
/// (RFC 9106's second recommended option).
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const KDF_ITERATIONS: u32 = 3;
/// Argon2id lanes.
pub const KDF_PARALLELISM: u32 = 1;
/// The most memory a reader lets a manifest ask of Argon2id (1 GiB).
const KDF_MAX_MEMORY_KIB: u32 = 1 << 20;

/// A master key or a passphrase, as given by the user; never printed.
pub struct Secret {
    inner: SecretKind,
}

enum SecretKind {
    Key(Zeroizing<[u8; 32]>),
    Passphrase(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, redacted)", self.kind())
    }
}

impl Secret {
    /// A 32-byte master key.
    pub fn key(key: [u8; 32]) -> Secret {
        Secret {
            inner: SecretKind::Key(Zeroizing::new(key)),
        }
    }

    /// A passphrase (any bytes, at least one).
    pub fn passphrase(p: Vec<u8>) -> Result<Secret, String> {
        let p = Zeroizing::new(p);
        if p.is_empty() {
            return Err("the passphrase is empty".into());
        }
        Ok(Secret {
            inner: SecretKind::Passphrase(p),
        })
    }

    /// `key file` or `passphrase`.
    pub fn kind(&self) -> &'static str {
        match self.inner {
            SecretKind::Key(_) => "key file",
            SecretKind::Passphrase(_) => "passphrase",
        }
    }

    /// Reads a key file: exactly 32 bytes, or 64 hexadecimal digits (one line; spaces
    /// and a final newline are ignored).
    pub fn from_key_file(path: &std::path::Path) -> Result<Secret, String> {
        let shown = path.display();
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
        let mut bytes = Zeroizing::new(Vec::new());
        f.take(4096)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
        Secret::parse_key(&bytes).map_err(|e| format!("the key file {shown} {e}"))
    }

    /// A key file's bytes as a key (see [`Secret::from_key_file`]).
    pub fn parse_key(bytes: &[u8]) -> Result<Secret, String> {
        let usage = "holds no key: it must hold 32 random bytes (head -c 32 /dev/urandom > KEY) or 64 hexadecimal digits (openssl rand -hex 32 > KEY)";
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            let s = Secret::key(k);
            k.zeroize();
            return Ok(s);
        }
        let text: Zeroizing<Vec<u8>> = Zeroizing::new(
            bytes
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        );
        if text.len() != 64 {
            return Err(usage.into());
        }
        let mut k = [0u8; 32];
        for (i, pair) in text.chunks(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => k[i] = (h << 4) | l,
                _ => {
                    k.zeroize();
                    return Err(usage.into());
                }
            }
        }
        let s = Secret::key(k);
        k.zeroize();
        Ok(s)
    }

    /// The passphrase in environment variable `var`.
    pub fn from_env(var: &str) -> Result<Secret, String> {
        use std::os::unix::ffi::OsStringExt;
        let v = std::env::var_os(var).ok_or_else(|| {
            format!("the environment variable {var} (--passphrase-env) is not set: set it to the passphrase")
        })?;
        Secret::passphrase(v.into_vec())
            .map_err(|_| format!("the environment variable {var} (--passphrase-env) is empty: set it to the passphrase"))
    }

    /// The passphrase read from file descriptor `fd` to its end (one final newline is
    /// not part of it), e.g. `--passphrase-fd 3 3<pass.txt`.
    pub fn from_fd(fd: i32) -> Result<Secret, String> {
        let path = format!("/proc/self/fd/{fd}");
        let f = std::fs::File::open(&path).map_err(|e| {
            format!("cannot read the passphrase from file descriptor {fd} (--passphrase-fd): {e}; open it for the command, as in --passphrase-fd 3 3<FILE")
        })?;
        let mut p = Zeroizing::new(Vec::new());
        f.take(64 << 10).read_to_end(&mut p).map_err(|e| {
            format!("cannot read the passphrase from file descriptor {fd} (--passphrase-fd): {e}")
        })?;
        if p.last() == Some(&b'\n') {
            p.pop();
            if p.last() == Some(&b'\r') {
                p.pop();
            }
        }
        let p = std::mem::take(&mut *p);
        Secret::passphrase(p).map_err(|_| {
            format!("file descriptor {fd} (--passphrase-fd) holds no passphrase: it is empty")
        })
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((hex_val(p[0])? << 4) | hex_val(p[1])?))
        .collect()
}

/// How a backup is encrypted, as its manifest records it (no key, ever).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// [`ALGORITHM`].
    pub algorithm: String,
    /// Plaintext bytes of a full chunk.
    pub chunk_bytes: u32,
    /// Where the master key comes from.
    pub key: KeySource,
    /// 16 bytes derived from the backup's key (hex): a wrong key is told at once.
    pub key_check: String,
}

/// Where the master key of an encrypted backup comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum KeySource {
    /// A key file (`--key-file`): the key itself.
    KeyFile,
    /// A passphrase (`--passphrase-env`, `--passphrase-fd`) through Argon2id.
    Passphrase {
        /// `argon2id`.
        kdf: String,
        /// Argon2 version (19 = 0x13).
        version: u32,
        /// Memory, KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
        /// 16 random bytes, hex.
        salt: String,
    },
}

impl KeySource {
    /// `key file` or `passphrase`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeySource::KeyFile => "key file",
            KeySource::Passphrase { .. } => "passphrase",
        }
    }

    /// The options that give this key.
    pub fn options(&self) -> &'static str {
        match self {
            KeySource::KeyFile => "--key-file FILE",
            KeySource::Passphrase { .. } => "--passphrase-env VAR or --passphrase-fd N",
        }
    }
}

/// Why a backup's keys cannot be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnlockError {
    /// The key (or passphrase) is not this backup's.
    #[error(
        "wrong key: the {given} given does not open this backup (its key check does not match); give the {kind} it was made with ({options})"
    )]
    WrongKey {
        /// What was given.
        given: &'static str,
        /// What the backup was made with.
        kind: &'static str,
        /// The options for that.
        options: &'static str,
    },
    /// A key file for a passphrase backup, or the other way round.
    #[error("this backup was encrypted with a {kind}, but a {given} was given: use {options}")]
    OtherKind {
        /// What was given.
        given: &'static str,
        /// What the backup was made with.
        kind: &'static str,
        /// The options for that.
        options: &'static str,
    },
    /// The manifest's encryption record cannot be used.
    #[error("the manifest's encryption record is not usable: {0}")]
    Bad(String),
}

/// The keys of one backup: the chunk cipher and the digest key, derived from the master
/// key and the backup's id.
pub struct Keys {
    /// AES-256-GCM (ring's: the same cipher, at the speed of the CPU's AES and carry-less
    /// multiply instructions).
    cipher: LessSafeKey,
    digest: Zeroizing<[u8; 32]>,
    backup_id: [u8; 16],
    chunk_bytes: u32,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("backup_id", &hex(&self.backup_id))
            .finish_non_exhaustive()
    }
}

fn derive(context: &str, master: &[u8; 32], backup_id: &[u8; 16]) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new([0u8; 48]);
    material[..32].copy_from_slice(master);
    material[32..].copy_from_slice(backup_id);
    Zeroizing::new(blake3::derive_key(context, &material[..]))
}

const DATA_CONTEXT: &str = "vdi-backup 2026 stream data key (aes-256-gcm)";
const DIGEST_CONTEXT: &str = "vdi-backup 2026 stream digest key (keyed blake3)";
const CHECK_CONTEXT: &str = "vdi-backup 2026 key check value";

fn argon(pass: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<Zeroizing<[u8; 32]>, String> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| e.to_string())?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass, salt, &mut out[..])
        .map_err(|e| e.to_string())?;
    Ok(out)
}

impl Keys {
    fn from_master(
        master: &[u8; 32],
        backup_id: [u8; 16],
        chunk_bytes: u32,
    ) -> Result<(Keys, String), String> {
        let data = derive(DATA_CONTEXT, master, &backup_id);
        let check = derive(CHECK_CONTEXT, master, &backup_id);
        let key = UnboundKey::new(&AES_256_GCM, &data[..])
            .map_err(|_| "the cipher refused a 32-byte key".to_owned())?;
        let keys = Keys {
            cipher: LessSafeKey::new(key),
            digest: derive(DIGEST_CONTEXT, master, &backup_id),
            backup_id,
            chunk_bytes,
        };
        Ok((keys, hex(&check[..16])))
    }

    /// New keys for the backup `backup_id` (a fresh salt for a passphrase), and what the
    /// manifest records of them.
    pub fn create(secret: &Secret, backup_id: [u8; 16]) -> Result<(Keys, Encryption), String> {
        let (master, key) = match &secret.inner {
            SecretKind::Key(k) => (Zeroizing::new(**k), KeySource::KeyFile),
            SecretKind::Passphrase(p) => {
                let mut salt = [0u8; 16];
                getrandom(&mut salt)?;
                let m = argon(p, &salt, KDF_MEMORY_KIB, KDF_ITERATIONS, KDF_PARALLELISM)
                    .map_err(|e| format!("deriving the key from the passphrase: {e}"))?;
                (
                    m,
                    KeySource::Passphrase {
                        kdf: "argon2id".into(),
                        version: 0x13,
                        memory_kib: KDF_MEMORY_KIB,
                        iterations: KDF_ITERATIONS,
                        parallelism: KDF_PARALLELISM,
                        salt: hex(&salt),
                    },
                )
            }
        };
        let (keys, key_check) = Keys::from_master(&master, backup_id, DEFAULT_CHUNK)?;
        Ok((
            keys,
            Encryption {
                algorithm: ALGORITHM.into(),
                chunk_bytes: DEFAULT_CHUNK,
                key,
                key_check,
            },
        ))
    }

    /// The keys of the backup `backup_id`, encrypted as `info` says, from `secret`:
    /// [`UnlockError::WrongKey`] unless the key check matches.
    pub fn unlock(
        secret: &Secret,
        info: &Encryption,
        backup_id: [u8; 16],
    ) -> Result<Keys, UnlockError> {
        if info.algorithm != ALGORITHM {
            return Err(UnlockError::Bad(format!(
                "algorithm '{}'; this vdi knows {ALGORITHM}",
                info.algorithm
            )));
        }
        if !CHUNK_RANGE.contains(&info.chunk_bytes) {
            return Err(UnlockError::Bad(format!(
                "chunk_bytes {} is out of range",
                info.chunk_bytes
            )));
        }
        let master = match (&secret.inner, &info.key) {
            (SecretKind::Key(k), KeySource::KeyFile) => Zeroizing::new(**k),
            (
                SecretKind::Passphrase(p),
                KeySource::Passphrase {
                    kdf,
                    version,
                    memory_kib,
                    iterations,
                    parallelism,
                    salt,
                },
            ) => {
                if kdf != "argon2id" || *version != 0x13 {
                    return Err(UnlockError::Bad(format!(
                        "key derivation {kdf} version {version}; this vdi knows argon2id version 19"
                    )));
                }
                if *memory_kib > KDF_MAX_MEMORY_KIB || *iterations > 64 || *parallelism > 64 {
                    return Err(UnlockError::Bad(format!(
                        "argon2id parameters m={memory_kib} KiB, t={iterations}, p={parallelism} are beyond what this vdi allows (1 GiB, 64, 64)"
                    )));
                }
                let salt = unhex(salt)
                    .filter(|s| (8..=64).contains(&s.len()))
                    .ok_or_else(|| UnlockError::Bad("the salt is not 8 to 64 hex bytes".into()))?;
                argon(p, &salt, *memory_kib, *iterations, *parallelism)
                    .map_err(|e| UnlockError::Bad(format!("argon2id: {e}")))?
            }
            (_, k) => {
                return Err(UnlockError::OtherKind {
                    given: secret.kind(),
                    kind: k.kind(),
                    options: k.options(),
                });
            }
        };
        let (keys, check) =
            Keys::from_master(&master, backup_id, info.chunk_bytes).map_err(UnlockError::Bad)?;
        if check != info.key_check {
            return Err(UnlockError::WrongKey {
                given: secret.kind(),
                kind: info.key.kind(),
                options: info.key.options(),
            });
        }
        Ok(keys)
    }

    /// A blake3 hasher keyed for this backup (the manifest's digests of an encrypted
    /// backup are keyed, so they tell nothing about the data to whoever lacks the key).
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.digest)
    }

    /// The backup these keys are for.
    pub fn backup_id(&self) -> [u8; 16] {
        self.backup_id
    }
}

/// The keys of the backup `m` records, from `secret`: `None` for a backup that is not
/// encrypted (a secret given for one is not needed, and is ignored with a warning); for
/// an encrypted one, [`BackupError::Key`](crate::format::manifest::BackupError::Key)
/// without a secret or with a wrong one, saying which option to give. `place` names the
/// backup in messages.
pub fn unlock_backup(
    m: &crate::format::manifest::Manifest,
    secret: Option<&Secret>,
    place: &str,
) -> Result<Option<Arc<Keys>>, crate::format::manifest::BackupError> {
    use crate::format::manifest::BackupError;
    let Some(info) = &m.encryption else {
        if let Some(s) = secret {
            tracing::warn!(
                "backup {place} is not encrypted: the {} given is not needed",
                s.kind()
            );
        }
        return Ok(None);
    };
    let Some(secret) = secret else {
        return Err(BackupError::Key(format!(
            "backup {place} is encrypted (with a {}): give its key with {}",
            info.key.kind(),
            info.key.options()
        )));
    };
    let id: [u8; 16] = unhex(&m.backup_id)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| BackupError::BadManifest {
            place: place.to_owned(),
            what: format!("backup_id '{}' is not 32 hex digits", m.backup_id),
        })?;
    match Keys::unlock(secret, info, id) {
        Ok(k) => Ok(Some(Arc::new(k))),
        Err(UnlockError::Bad(what)) => Err(BackupError::BadManifest {
            place: place.to_owned(),
            what: format!("the encryption record cannot be used: {what}"),
        }),
        Err(e) => Err(BackupError::Key(format!("backup {place}: {e}"))),
    }
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    // The kernel's generator, through the same call the rest of the tool uses for ids.
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| format!("cannot read random bytes (/dev/urandom): {e}"))?;
    f.read_exact(buf)
        .map_err(|e| format!("cannot read random bytes (/dev/urandom): {e}"))
}

/// The container header of device `device`'s stream of the backup `keys` are for.
fn header(keys: &Keys, device: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&1u32.to_le_bytes());
    h[16..20].copy_from_slice(&keys.chunk_bytes.to_le_bytes());
    h[20..24].copy_from_slice(&device.to_le_bytes());
    h[24..40].copy_from_slice(&keys.backup_id);
    h
}

/// What a container header says, read without a key: which device of which backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The device index.
    pub device: u32,
    /// The backup id.
    pub backup_id: [u8; 16],
}

/// Reads the container header at the start of `head`, if there is one.
pub fn peek_header(head: &[u8]) -> Option<HeaderInfo> {
    if head.len() < HEADER_LEN || head[0..8] != MAGIC {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&head[24..40]);
    Some(HeaderInfo {
        device: u32::from_le_bytes([head[20], head[21], head[22], head[23]]),
        backup_id: id,
    })
}

fn nonce(device: u32, chunk: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0..4].copy_from_slice(&device.to_be_bytes());
    n[4..12].copy_from_slice(&chunk.to_be_bytes());
    n
}

fn aad(header: &[u8; HEADER_LEN], chunk: u64, word: u32) -> [u8; HEADER_LEN + 12] {
    let mut a = [0u8; HEADER_LEN + 12];
    a[..HEADER_LEN].copy_from_slice(header);
    a[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&chunk.to_le_bytes());
    a[HEADER_LEN + 8..].copy_from_slice(&word.to_le_bytes());
    a
}

/// Seals chunk `chunk` of device `device`'s stream (`last`: the stream's last chunk):
/// appends its record (word, ciphertext, tag) to `out`.
fn seal_chunk(
    keys: &Keys,
    header: &[u8; HEADER_LEN],
    device: u32,
    chunk: u64,
    last: bool,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let word = plain.len() as u32 | if last { FINAL } else { 0 };
    let n = nonce(device, chunk);
    let a = aad(header, chunk, word);
    out.extend_from_slice(&word.to_le_bytes());
    out.extend_from_slice(plain);
    let tag = keys
        .cipher
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(n),
            Aad::from(&a[..]),
            &mut out[4..],
        )
        .map_err(|_| io::Error::other("encrypting a chunk failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Seals what is written into chunks onto `inner`, on every core (an
/// [`Ordered`](crate::ordered::Ordered) writer: chunk `k` is sealed by whichever worker
/// is free, the records are written in order). A flush seals what is buffered as a
/// short chunk; [`SealWriter::finish`] seals the last chunk (possibly empty) with the
/// last-chunk marker.
pub struct SealWriter<W: Write> {
    inner: crate::ordered::Ordered<W>,
}

impl<W: Write> std::fmt::Debug for SealWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter")
            .field("chunks", &self.inner.pieces())
            .finish()
    }
}

impl<W: Write> SealWriter<W> {
    /// Writes the container header of device `device`'s stream onto `inner`.
    pub fn new(mut inner: W, keys: Arc<Keys>, device: u32) -> io::Result<SealWriter<W>> {
        let header = header(&keys, device);
        inner.write_all(&header)?;
        let chunk = keys.chunk_bytes as usize;
        let make: crate::ordered::MakeWork = Arc::new(move || {
            let keys = keys.clone();
            Box::new(move |k: u64, plain: &[u8], last: bool, out: &mut Vec<u8>| {
                seal_chunk(&keys, &header, device, k, last, plain, out)
            }) as crate::ordered::Work
        });
        Ok(SealWriter {
            inner: crate::ordered::Ordered::new(
                inner,
                chunk,
                crate::ordered::workers(),
                true,
                make,
            ),
        })
    }

    /// The writer below.
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }

    /// Seals the last chunk and returns the writer below.
    pub fn finish(self) -> io::Result<W> {
        self.inner.finish()
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.inner.write(data)
    }

    /// Seals what is buffered as a (short) chunk, so all written so far is on `inner`.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn damaged(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Opens the chunks of a sealed stream read from `inner`: every chunk authenticated
/// before a byte of it is served, and the end only after the last chunk.
pub struct SealReader<R: Read> {
    inner: R,
    keys: Arc<Keys>,
    device: u32,
    header: [u8; HEADER_LEN],
    buf: Vec<u8>,
    pos: usize,
    chunk: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for SealReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealReader")
            .field("device", &self.device)
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl<R: Read> SealReader<R> {
    /// Reads and checks the container header: device `device`'s stream of the backup
    /// `keys` are for.
    pub fn new(mut inner: R, keys: Arc<Keys>, device: u32) -> io::Result<SealReader<R>> {
        let mut got = [0u8; HEADER_LEN];
        let n = crate::codec::read_full(&mut inner, &mut got)?;
        if n < HEADER_LEN || got[0..8] != MAGIC {
            return Err(damaged(
                "it is not an encrypted vdi stream (no VDI-SEAL header)".into(),
            ));
        }
        let version = u32::from_le_bytes([got[8], got[9], got[10], got[11]]);
        if version != VERSION {
            return Err(damaged(format!(
                "encrypted stream container version {version}; this vdi reads version {VERSION}"
            )));
        }
        let Some(h) = peek_header(&got) else {
            return Err(damaged("no container header".into()));
        };
        if h.backup_id != keys.backup_id {
            return Err(damaged(format!(
                "it belongs to another backup ({}), not to this one ({})",
                hex(&h.backup_id),
                hex(&keys.backup_id)
            )));
        }
        if h.device != device {
            return Err(damaged(format!(
                "it holds the encrypted stream of device {}, not of device {device}: the stream files were swapped or renamed",
                h.device
            )));
        }
        let expected = header(&keys, device);
        if got != expected {
            return Err(damaged(
                "its container header does not match the manifest (algorithm or chunk size changed)".into(),
            ));
        }
        let cap = keys.chunk_bytes as usize + TAG_LEN;
        Ok(SealReader {
            inner,
            keys,
            device,
            header: expected,
            buf: Vec::with_capacity(cap),
            pos: 0,
            chunk: 0,
            done: false,
        })
    }

    /// Chunks opened so far.
    pub fn chunks(&self) -> u64 {
        self.chunk
    }

    /// Reads and opens the next chunk into `buf`; false at the end.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let mut w = [0u8; 4];
        let n = crate::codec::read_full(&mut self.inner, &mut w)?;
        if n == 0 {
            return Err(damaged(format!(
                "the encrypted stream is truncated: it ends after chunk {} without its last chunk",
                self.chunk
            )));
        }
        if n < 4 {
            return Err(damaged(format!(
                "the encrypted stream is truncated in the header of chunk {}",
                self.chunk
            )));
        }
        let word = u32::from_le_bytes(w);
        let len = (word & !FINAL) as usize;
        if len > self.keys.chunk_bytes as usize {
            return Err(damaged(format!(
                "chunk {} of the encrypted stream is damaged: its length {len} is more than the chunk size {}",
                self.chunk, self.keys.chunk_bytes
            )));
        }
        self.buf.resize(len + TAG_LEN, 0);
        let got = crate::codec::read_full(&mut self.inner, &mut self.buf)?;
        if got < len + TAG_LEN {
            return Err(damaged(format!(
                "the encrypted stream is truncated in chunk {}",
                self.chunk
            )));
        }
        let a = aad(&self.header, self.chunk, word);
        let n = nonce(self.device, self.chunk);
        // The ciphertext and its tag, opened in place: the plaintext is the first `len`.
        let opened = self
            .keys
            .cipher
            .open_in_place(
                Nonce::assume_unique_for_key(n),
                Aad::from(&a[..]),
                &mut self.buf,
            )
            .map(|p| p.len());
        self.buf.truncate(len);
        if opened != Ok(len) {
            self.buf.clear();
            return Err(damaged(format!(
                "chunk {} of the encrypted stream fails authentication: it was altered, moved, or taken from another stream or backup",
                self.chunk
            )));
        }
        self.chunk += 1;
        self.pos = 0;
        if word & FINAL != 0 {
            self.done = true;
            let mut extra = [0u8; 1];
            if crate::codec::read_full(&mut self.inner, &mut extra)? != 0 {
                self.buf.clear();
                return Err(damaged(format!(
                    "bytes follow the last chunk ({}) of the encrypted stream: it was changed after the backup",
                    self.chunk - 1
                )));
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: u8) -> (Secret, Encryption, [u8; 16]) {
        let s = Secret::key([42u8; 32]);
        let bid = [id; 16];
        let (_, info) = Keys::create(&s, bid).unwrap();
        (s, info, bid)
    }

    fn seal(data: &[u8], id: u8, device: u32, flush_every: Option<usize>) -> Vec<u8> {
        let (s, info, bid) = keys(id);
        let k = Arc::new(Keys::unlock(&s, &info, bid).unwrap());
        let mut w = SealWriter::new(Vec::new(), k, device).unwrap();
        match flush_every {
            Some(n) => {
                for p in data.chunks(n) {
                    w.write_all(p).unwrap();
                    w.flush().unwrap();
                }
            }
            None => w.write_all(data).unwrap(),
        }
        w.finish().unwrap()
    }

    fn open(sealed: &[u8], id: u8, device: u32) -> io::Result<Vec<u8>> {
        let (s, info, bid) = keys(id);
        let k = Arc::new(Keys::unlock(&s, &info, bid).unwrap());
        let mut r = SealReader::new(sealed, k, device)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Offsets of the records of a sealed stream.
    fn records(sealed: &[u8]) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        let mut at = HEADER_LEN;
        while at < sealed.len() {
            let w = u32::from_le_bytes(sealed[at..at + 4].try_into().unwrap());
            let len = 4 + (w & !FINAL) as usize + TAG_LEN;
            v.push((at, len));
            at += len;
        }
        v
    }

    #[test]
    fn round_trips_of_any_size_and_flushes() {
        for n in [0, 1, 4095, 1 << 20, (1 << 20) + 1, 3 << 20] {
            let d = data(n);
            assert_eq!(open(&seal(&d, 1, 2, None), 1, 2).unwrap(), d, "{n}");
            assert_eq!(
                open(&seal(&d, 1, 2, Some(100_000)), 1, 2).unwrap(),
                d,
                "{n}"
            );
        }
    }

    #[test]
    fn every_kind_of_tampering_is_found() {
        let d = data(3 << 20);
        let s = seal(&d, 1, 0, None);
        let recs = records(&s);
        assert_eq!(recs.len(), 4);
        // A flipped byte, anywhere after the header.
        for at in [HEADER_LEN + 1, HEADER_LEN + 10, s.len() / 2, s.len() - 1] {
            let mut t = s.clone();
            t[at] ^= 1;
            assert!(open(&t, 1, 0).is_err(), "flip at {at}");
        }
        // Two chunks swapped.
        let mut t = s[..HEADER_LEN].to_vec();
        let (a, b) = (recs[1], recs[0]);
        t.extend_from_slice(&s[a.0..a.0 + a.1]);
        t.extend_from_slice(&s[b.0..b.0 + b.1]);
        t.extend_from_slice(&s[recs[2].0..]);
        let e = open(&t, 1, 0).unwrap_err().to_string();
        assert!(e.contains("chunk 0") && e.contains("authentication"), "{e}");
        // Truncated at a chunk boundary, and in a chunk.
        let e = open(&s[..recs[3].0], 1, 0).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("last chunk"), "{e}");
        assert!(open(&s[..s.len() - 3], 1, 0).is_err());
        assert!(open(&s[..HEADER_LEN + 2], 1, 0).is_err());
        // A byte appended.
        let mut t = s.clone();
        t.push(0);
        let e = open(&t, 1, 0).unwrap_err().to_string();
        assert!(e.contains("follow the last chunk"), "{e}");
        // Another device's stream, even with its header rewritten to this device.
        let other = seal(&d, 1, 1, None);
        let e = open(&other, 1, 0).unwrap_err().to_string();
        assert!(e.contains("device 1, not of device 0"), "{e}");
        let mut t = other.clone();
        t[..HEADER_LEN].copy_from_slice(&s[..HEADER_LEN]);
        let e = open(&t, 1, 0).unwrap_err().to_string();
        assert!(e.contains("authentication"), "{e}");
        // A chunk of another device's stream in this one.
        let mut t = s.clone();
        let o = records(&other)[1];
        t[recs[1].0..recs[1].0 + recs[1].1].copy_from_slice(&other[o.0..o.0 + o.1]);
        assert!(open(&t, 1, 0).is_err());
        // Another backup's stream (same key).
        let e = open(&seal(&d, 2, 0, None), 1, 0).unwrap_err().to_string();
        assert!(e.contains("another backup"), "{e}");
        // A last chunk marked not last (and the other way round) fails its tag.
        let mut t = s.clone();
        t[recs[3].0 + 3] ^= 0x80;
        assert!(open(&t, 1, 0).is_err());
    }

    #[test]
    fn wrong_and_other_kinds_of_keys_are_told() {
        let (_, info, bid) = keys(1);
        let e = Keys::unlock(&Secret::key([1u8; 32]), &info, bid).unwrap_err();
        assert!(matches!(e, UnlockError::WrongKey { .. }), "{e}");
        assert!(e.to_string().starts_with("wrong key"), "{e}");
        let p = Secret::passphrase(b"pw".to_vec()).unwrap();
        let e = Keys::unlock(&p, &info, bid).unwrap_err();
        assert!(e.to_string().contains("--key-file"), "{e}");
        // A key check from another backup id does not match.
        let (s, _, _) = keys(1);
        assert!(Keys::unlock(&s, &info, [9u8; 16]).is_err());
    }

    #[test]
    fn a_passphrase_goes_through_argon2id() {
        let p = Secret::passphrase(b"correct horse".to_vec()).unwrap();
        let (_, info) = Keys::create(&p, [3u8; 16]).unwrap();
        assert!(matches!(info.key, KeySource::Passphrase { .. }));
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains("correct horse"));
        assert!(Keys::unlock(&p, &info, [3u8; 16]).is_ok());
        let wrong = Secret::passphrase(b"correct horsE".to_vec()).unwrap();
        assert!(matches!(
            Keys::unlock(&wrong, &info, [3u8; 16]),
            Err(UnlockError::WrongKey { .. })
        ));
        // Hostile parameters are refused before any work.
        let mut big = info.clone();
        if let KeySource::Passphrase { memory_kib, .. } = &mut big.key {
            *memory_kib = u32::MAX;
        }
        assert!(matches!(
            Keys::unlock(&p, &big, [3u8; 16]),
            Err(UnlockError::Bad(_))
        ));
    }

    #[test]
    fn key_files_in_both_forms() {
        let raw = [5u8; 32];
        assert!(Secret::parse_key(&raw).is_ok());
        let text = format!("{}\n", "ab".repeat(32));
        assert!(Secret::parse_key(text.as_bytes()).is_ok());
        assert!(Secret::parse_key(b"short").is_err());
        assert!(Secret::parse_key("zz".repeat(32).as_bytes()).is_err());
        assert_eq!(
            format!("{:?}", Secret::key(raw)),
            "Secret(key file, redacted)"
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
                                keep_header in proptest::prelude::any::<bool>()) {
            let mut input = bytes;
            if keep_header {
                let s = seal(b"x", 1, 0, None);
                let mut v = s[..HEADER_LEN].to_vec();
                v.extend_from_slice(&input);
                input = v;
            }
            let _ = open(&input, 1, 0);
        }

        #[test]
        fn any_single_flip_is_found(at in 0usize..2000, bit in 0u8..8) {
            let s = seal(&data(1500), 1, 0, Some(700));
            let at = at % s.len();
            let mut t = s.clone();
            t[at] ^= 1 << bit;
            proptest::prop_assert!(open(&t, 1, 0).is_err());
        }
    }
}
