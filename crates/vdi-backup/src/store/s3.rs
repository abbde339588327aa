//! A backup in S3-compatible object storage (`s3://BUCKET/PREFIX`: AWS S3, Ceph RGW, MinIO,
//! Garage, s3s-fs), through the `object_store` crate, with the [`Store`] contract of a
//! directory.
//!
//! # Layout
//!
//! ```text
//! s3://BUCKET/PREFIX/
//!   manifest.json                 written last, in one PUT; its user metadata
//!                                 x-amz-meta-vdi-objects names the generation below
//!   g-3fa9c01d/device-0.stream    one object per device stream, of that generation
//!   g-3fa9c01d/device-1.stream.zst
//!   .vdi-lock                     while a backup is being written: who writes it
//! ```
//!
//! Each backup written into a prefix is a new *generation*: its streams go under a key
//! of their own, so the backup a `--force` backup replaces stays readable, whole, until
//! the new manifest is stored (one PUT, atomic in S3); only then are the old generation's
//! objects deleted. A manifest without the metadata (a backup directory copied with
//! `aws s3 cp --recursive`) names its streams beside it, at `PREFIX/device-N.stream`.
//!
//! # Streams: multipart uploads of unknown size, in bounded memory
//!
//! A stream is written as one multipart upload, created when its first part is full (a
//! stream smaller than one part is one PUT). Parts are uploaded while the engine goes on
//! writing, at most [`S3Options::parts_in_flight`] per stream at a time (a write waits
//! for the oldest when that many are in flight), so a stream holds at most
//! `part size × (parts in flight + 1)` bytes; as parts grow, fewer fly at once, so that
//! the bytes in flight stay within `parts in flight × first part size` (but one part at
//! least). The part size starts at
//! [`S3Options::part_size`] and doubles after each tenth of the part cap
//! ([`S3Options::part_cap`], 10,000 by default as S3's; some providers allow 1,000), up to
//! S3's 5 GiB, so a stream of any size fits in the cap. Each part carries a SHA-256
//! checksum the server checks (where it supports it, `--s3-checksum`), besides the
//! stream's own blake3 in the manifest.
//!
//! A stream dropped before it is finished (an error, an interrupt, the engine's death)
//! aborts its upload (AbortMultipartUpload), and a writer dropped before its commit deletes
//! what its generation stored and its lock: nothing but the old backup is left. If the
//! server cannot be reached to abort, the message names the upload left behind.
//!
//! Reads are ranged GETs of [`S3Options::read_size`] bytes, [`S3Options::read_ahead`] of
//! them in flight ahead of the reader.
//!
//! # Configuration
//!
//! As the AWS tools: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! else the profile `AWS_PROFILE` (or `default`) of the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`); `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`, or the profile's `region` in `~/.aws/config`); `AWS_ENDPOINT_URL_S3`
//! or `AWS_ENDPOINT_URL`. A front end sets the rest with [`configure`]. Credentials are
//! never logged, never in a message (a server's error that quotes them is scrubbed) and
//! never stored.
//!
//! The store's calls block (they run their requests on a small runtime of its own, two
//! worker threads for every upload and download of the process, no thread per part):
//! call them from ordinary threads, as the client role's device threads do, not from
//! inside an async task.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, MultipartUpload, ObjectStore,
    ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tokio::task::JoinHandle;

use super::{Commit, Object, ObjectWriter, Properties, Store, StoreReader, StoreWriter, Tracker};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::manifest::{BackupError, MANIFEST, parse_manifest_any};

/// The user metadata of the manifest that names its generation.
const GEN_META: &str = "vdi-objects";
/// The lock object's name.
pub const LOCK: &str = ".vdi-lock";
/// S3's smallest part (but the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;

/// Server-side encryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS with this key id (or ARN).
    Kms(String),
}

/// Credentials given by the caller instead of the environment's (a library user, tests).
/// `Debug` shows neither.
#[derive(Clone)]
pub struct StaticCredentials {
    key_id: String,
    secret: String,
}

impl StaticCredentials {
    /// An access key id and its secret.
    pub fn new(key_id: impl Into<String>, secret: impl Into<String>) -> StaticCredentials {
        StaticCredentials {
            key_id: key_id.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticCredentials(***)")
    }
}

/// How S3 stores are reached and written (see the module's docs for the environment).
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Credentials to use instead of the environment's and the profile's.
    pub credentials: Option<StaticCredentials>,
    /// The endpoint (`http://127.0.0.1:9000`); else `AWS_ENDPOINT_URL_S3` /
    /// `AWS_ENDPOINT_URL`; else AWS's.
    pub endpoint: Option<String>,
    /// The region; else `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's, `us-east-1`.
    pub region: Option<String>,
    /// The credentials profile; else `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// Virtual-hosted-style addressing (`BUCKET.host/KEY`) instead of path style
    /// (`host/BUCKET/KEY`, the default: what S3-compatible servers expect).
    pub virtual_hosted: bool,
    /// The storage class of the objects written (`STANDARD_IA`, `GLACIER_IR`, ...).
    pub storage_class: Option<String>,
    /// Server-side encryption.
    pub sse: Option<Sse>,
    /// A CA certificate (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The most parts of one stream's upload.
    pub part_cap: u32,
    /// The first part size (at least 5 MiB).
    pub part_size: u64,
    /// Parts of one stream uploaded at a time.
    pub parts_in_flight: usize,
    /// Bytes of one ranged GET.
    pub read_size: u64,
    /// Ranged GETs of one stream in flight ahead of the reader.
    pub read_ahead: usize,
    /// Retries of a request that failed transiently (5xx, throttling, a reset).
    pub retries: usize,
    /// How long a request is retried at most.
    pub retry_timeout: Duration,
    /// Send a SHA-256 checksum with every part (and object) for the server to check.
    pub checksum: bool,
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            credentials: None,
            endpoint: None,
            region: None,
            profile: None,
            virtual_hosted: false,
            storage_class: None,
            sse: None,
            ca_file: None,
            part_cap: 10_000,
            part_size: 8 << 20,
            parts_in_flight: 4,
            // Smaller than a part: a restore of 4 devices stays well under 256 MiB.
            read_size: 4 << 20,
            read_ahead: 4,
            retries: 5,
            retry_timeout: Duration::from_secs(60),
            checksum: true,
        }
    }
}

static OPTIONS: Mutex<Option<S3Options>> = Mutex::new(None);

/// Sets the options of the S3 stores made from now on (a front end calls it once, from
/// its command line and configuration).
pub fn configure(o: S3Options) {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
}

fn options() -> S3Options {
    OPTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Whether `name` names an S3 location (`s3://...`).
pub fn is_s3(name: &str) -> bool {
    name.starts_with("s3://")
}

/// Splits `s3://BUCKET/PREFIX` into the bucket and the prefix (without slashes at its
/// ends; empty for the bucket's root).
pub fn parse_url(name: &str) -> Result<(String, String)> {
    let rest = name.strip_prefix("s3://").ok_or_else(|| {
        fail(
            Kind::Usage,
            format!("{name} is not an S3 location (s3://BUCKET/PREFIX)"),
        )
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !valid {
        return Err(fail(
            Kind::Usage,
            format!(
                "{name}: '{bucket}' is not a bucket name (3 to 63 lower-case letters, digits, dots and hyphens): write s3://BUCKET/PREFIX"
            ),
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(fail(
            Kind::Usage,
            format!("{name}: the prefix '{prefix}' has an empty, '.' or '..' part"),
        ));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

// ---------------------------------------------------------------------------------------
// The runtime, credentials and the client.

/// The process's runtime for S3 requests: two worker threads drive every upload and
/// download (no thread per part); callers block on it from their own threads.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vdi-s3")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| {
        fail(
            Kind::Other,
            format!("cannot start the S3 client's runtime: {e}"),
        )
    })
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(runtime()?.block_on(f))
}

/// Credentials, never shown (`Debug` hides them).
#[derive(Clone)]
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
    /// Where they came from, as messages say it.
    from: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `text` with every credential replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for s in [Some(&self.secret), self.token.as_ref(), Some(&self.key_id)]
            .into_iter()
            .flatten()
        {
            if s.len() >= 4 {
                t = t.replace(s.as_str(), "***");
            }
        }
        t
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn home() -> Option<PathBuf> {
    env("HOME").map(PathBuf::from)
}

/// The `[section]` of an ini file: its `key = value` pairs.
fn ini_section(text: &str, section: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            cur = Some(s.trim().to_owned());
            if cur.as_deref() == Some(section) {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if cur.as_deref() == Some(section)
            && let Some((k, v)) = l.split_once('=')
            && let Some(f) = found.as_mut()
        {
            let f: &mut Vec<(String, String)> = f;
            f.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    found
}

fn ini_get(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

fn profile_name(o: &S3Options) -> String {
    o.profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into())
}

fn credentials(o: &S3Options) -> Result<Credentials> {
    if let Some(c) = &o.credentials {
        return Ok(Credentials {
            key_id: c.key_id.clone(),
            secret: c.secret.clone(),
            token: None,
            from: "the credentials given".into(),
        });
    }
    let profile_given = o.profile.is_some() || env("AWS_PROFILE").is_some();
    if !profile_given
        && let (Some(key_id), Some(secret)) =
            (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Credentials {
            key_id,
            secret,
            token: env("AWS_SESSION_TOKEN"),
            from: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
        });
    }
    let profile = profile_name(o);
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/credentials")));
    let text = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
    if let (Some(f), Some(text)) = (&file, &text) {
        if let Some(pairs) = ini_section(text, &profile) {
            let key_id = ini_get(&pairs, "aws_access_key_id");
            let secret = ini_get(&pairs, "aws_secret_access_key");
            if let (Some(key_id), Some(secret)) = (key_id, secret) {
                return Ok(Credentials {
                    key_id,
                    secret,
                    token: ini_get(&pairs, "aws_session_token"),
                    from: format!("profile '{profile}' of {}", f.display()),
                });
            }
            return Err(fail(
                Kind::Input,
                format!(
                    "profile '{profile}' of {} has no aws_access_key_id and aws_secret_access_key: add them",
                    f.display()
                ),
            ));
        }
        if profile_given {
            return Err(fail(
                Kind::Input,
                format!(
                    "there is no profile '{profile}' in {}: add a [{profile}] section with aws_access_key_id and aws_secret_access_key, or set AWS_PROFILE to one it has",
                    f.display()
                ),
            ));
        }
    }
    Err(fail(
        Kind::Input,
        format!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or put a [{profile}] profile in {} (AWS_PROFILE picks another)",
            file.map_or_else(|| "~/.aws/credentials".into(), |f| f.display().to_string())
        ),
    ))
}

fn region(o: &S3Options) -> String {
    if let Some(r) = o
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
    {
        return r;
    }
    let profile = profile_name(o);
    let file = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/config")));
    let section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| ini_section(&t, &section))
        .and_then(|p| ini_get(&p, "region"))
        .unwrap_or_else(|| "us-east-1".into())
}

/// A bucket, reached: the client and what messages need.
#[derive(Clone)]
pub(crate) struct Bucket {
    client: Arc<AmazonS3>,
    name: String,
    creds: Credentials,
    endpoint: String,
    opts: S3Options,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn connect(bucket: &str, o: &S3Options) -> Result<Bucket> {
    let creds = credentials(o)?;
    let endpoint = o
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"));
    let region = region(o);
    let mut client_opts = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300));
    if let Some(ca) = &o.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            fail(
                Kind::Input,
                format!(
                    "cannot read the CA file {} (--s3-ca-file): {e}",
                    ca.display()
                ),
            )
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(fail(
                Kind::Usage,
                format!(
                    "the CA file {} (--s3-ca-file) holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ca.display()
                ),
            ));
        }
        let cert = object_store::Certificate::from_pem(&pem).map_err(|e| {
            fail(
                Kind::Input,
                format!(
                    "the CA file {} (--s3-ca-file) is not a PEM certificate: {e}",
                    ca.display()
                ),
            )
        })?;
        client_opts = client_opts.with_root_certificate(cert);
    }
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&region)
        .with_access_key_id(&creds.key_id)
        .with_secret_access_key(&creds.secret)
        .with_virtual_hosted_style_request(o.virtual_hosted)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: o.retries,
            retry_timeout: o.retry_timeout,
        });
    if let Some(t) = &creds.token {
        b = b.with_token(t);
    }
    if let Some(e) = &endpoint {
        if e.starts_with("http://") {
            client_opts = client_opts.with_allow_http(true);
        }
        b = b.with_endpoint(e.trim_end_matches('/'));
    }
    b = b.with_client_options(client_opts);
    if o.checksum {
        b = b.with_checksum_algorithm(Checksum::SHA256);
    }
    match &o.sse {
        Some(Sse::S3) => {
            let key = "aws_server_side_encryption"
                .parse()
                .map_err(|e| fail(Kind::Other, format!("SSE-S3: {e}")))?;
            b = b.with_config(key, "AES256");
        }
        Some(Sse::Kms(id)) => b = b.with_sse_kms_encryption(id),
        None => {}
    }
    let client = b.build().map_err(|e| {
        fail(
            Kind::Usage,
            format!(
                "cannot set up the S3 client for bucket {bucket}: {}",
                creds.scrub(&e.to_string())
            ),
        )
    })?;
    Ok(Bucket {
        client: Arc::new(client),
        name: bucket.to_owned(),
        creds,
        endpoint: endpoint.unwrap_or_else(|| format!("AWS S3 ({region})")),
        opts: o.clone(),
    })
}

/// The whole text of an error and its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Bucket {
    /// `error` (of `doing`, e.g. "listing s3://b/p") as a message that says what to fix,
    /// with its kind.
    fn fail(&self, doing: &str, e: &object_store::Error) -> crate::Error {
        let (kind, msg) = self.explain(doing, e);
        fail(kind, msg)
    }

    fn explain(&self, doing: &str, e: &object_store::Error) -> (Kind, String) {
        let text = self.creds.scrub(&chain(e));
        let has = |s: &str| text.contains(s);
        let b = &self.name;
        let fix = if has("SignatureDoesNotMatch") {
            format!(
                "the server refused the signature: the secret key (from {}) is wrong for this access key; fix AWS_SECRET_ACCESS_KEY or the profile",
                self.creds.from
            )
        } else if has("InvalidAccessKeyId") || has("InvalidAccessKey") {
            format!(
                "the server does not know the access key (from {}): fix AWS_ACCESS_KEY_ID or the profile",
                self.creds.from
            )
        } else if has("RequestTimeTooSkewed") || has("clock skew") || has("RequestExpired") {
            "the clock of this machine differs from the server's by more than 15 minutes: set it right (NTP, timedatectl) and try again".to_owned()
        } else if has("InvalidStorageClass") {
            format!(
                "the server does not offer storage class {}: name one it has (--s3-storage-class), or none",
                self.opts.storage_class.as_deref().unwrap_or("?")
            )
        } else if has("NoSuchBucket") {
            format!(
                "bucket {b} does not exist at {}: create it (aws s3 mb s3://{b}), or fix the bucket name or the endpoint (--s3-endpoint, AWS_ENDPOINT_URL)",
                self.endpoint
            )
        } else if has("AccessDenied") || matches!(e, object_store::Error::PermissionDenied { .. }) {
            format!(
                "access denied to bucket {b} for the credentials from {}: grant them s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload on it",
                self.creds.from
            )
        } else if matches!(e, object_store::Error::Unauthenticated { .. }) {
            format!(
                "the server refused the credentials from {}: fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile",
                self.creds.from
            )
        } else if has("Connection refused")
            || has("connection refused")
            || has("dns error")
            || has("error sending request")
            || has("tcp connect")
            || has("timed out")
            || has("connection closed")
            || has("Connection reset")
        {
            format!(
                "cannot reach the S3 endpoint {} (retried): check --s3-endpoint / AWS_ENDPOINT_URL, the network, and that the server runs",
                self.endpoint
            )
        } else {
            String::new()
        };
        let kind = if fix.is_empty() {
            Kind::Other
        } else if has("InvalidStorageClass") {
            Kind::Usage
        } else {
            Kind::Input
        };
        let msg = if fix.is_empty() {
            format!("{doing}: {text}")
        } else {
            format!("{doing}: {fix} ({})", short(&text))
        };
        (kind, msg)
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }
}

/// The first line of `text`, at most 300 characters.
fn short(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut s: String = first.chars().take(300).collect();
    if s.len() < first.len() {
        s.push_str("...");
    }
    s
}

// ---------------------------------------------------------------------------------------
// The store.

/// The prefixes of this process's writers (one writer at a time, contract 1).
static WRITING: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn writing() -> std::sync::MutexGuard<'static, Option<HashSet<String>>> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A backup at `s3://BUCKET/PREFIX`.
pub struct S3Store {
    bucket_name: String,
    prefix: String,
    opts: S3Options,
    bucket: OnceLock<std::result::Result<Bucket, (Kind, String)>>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// The store at `url` (`s3://BUCKET/PREFIX`), with the options [`configure`]d; nothing
    /// is asked of the server yet.
    pub fn new(url: &str) -> Result<S3Store> {
        S3Store::with_options(url, options())
    }

    /// The store at `url` with options `opts`.
    pub fn with_options(url: &str, opts: S3Options) -> Result<S3Store> {
        let (bucket_name, prefix) = parse_url(url)?;
        if opts.part_size < MIN_PART || opts.part_size > MAX_PART {
            return Err(fail(
                Kind::Usage,
                format!(
                    "the S3 part size must be between 5 MiB and 5 GiB (S3's limits), not {} bytes",
                    opts.part_size
                ),
            ));
        }
        if opts.part_cap < 2
            || opts.parts_in_flight == 0
            || opts.read_ahead == 0
            || opts.read_size == 0
        {
            return Err(fail(
                Kind::Usage,
                "the S3 part cap must be at least 2, and parts in flight, read size and read-ahead at least 1",
            ));
        }
        Ok(S3Store {
            bucket_name,
            prefix,
            opts,
            bucket: OnceLock::new(),
        })
    }

    /// The store at `PREFIX/name` (a backup of a repository), sharing this one's client.
    pub(crate) fn child(&self, name: &str) -> S3Store {
        let c = S3Store {
            bucket_name: self.bucket_name.clone(),
            prefix: if name.is_empty() {
                self.prefix.clone()
            } else {
                self.key(name)
            },
            opts: self.opts.clone(),
            bucket: OnceLock::new(),
        };
        if let Some(Ok(b)) = self.bucket.get() {
            let _ = c.bucket.set(Ok(b.clone()));
        }
        c
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket_name)
        } else {
            format!("s3://{}/{}", self.bucket_name, self.prefix)
        }
    }

    pub(crate) fn bucket(&self) -> Result<&Bucket> {
        self.bucket
            .get_or_init(|| {
                connect(&self.bucket_name, &self.opts).map_err(|e| (e.kind(), e.to_string()))
            })
            .as_ref()
            .map_err(|(k, m)| fail(*k, m.clone()))
    }

    /// The key of `name` under the prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The keys under the prefix, relative to it.
    pub(crate) fn list_names(&self, b: &Bucket) -> Result<Vec<(String, u64)>> {
        let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        let client = b.client.clone();
        let items = block_on(async move {
            let mut s = client.list(prefix.as_ref());
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                out.push(m.map(|m| (m.location.to_string(), m.size))?);
            }
            Ok::<_, object_store::Error>(out)
        })?
        .map_err(|e| b.fail(&format!("cannot list {}", self.url()), &e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(items
            .into_iter()
            .filter_map(|(k, n)| k.strip_prefix(&strip).map(|r| (r.to_owned(), n)))
            .collect())
    }

    /// The manifest's bytes, its generation and its ETag, `None` if there is none.
    fn get_manifest(&self, b: &Bucket) -> std::result::Result<Option<Stored>, (Kind, String)> {
        let key = Key::from(self.key(MANIFEST));
        let client = b.client.clone();
        let r = block_on(async move {
            let g = match client.get_opts(&key, GetOptions::default()).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let size = g.meta.size;
            let etag = g.meta.e_tag.clone();
            let gen_ = g
                .attributes
                .get(&Attribute::Metadata(GEN_META.into()))
                .map(|v| v.to_string());
            if size > super::MAX_MANIFEST_BYTES {
                return Ok(Some((Err(size), gen_, etag)));
            }
            let bytes = g.bytes().await?;
            Ok(Some((Ok(bytes.to_vec()), gen_, etag)))
        })
        .map_err(|e| (e.kind(), e.to_string()))?;
        match r {
            Ok(None) => Ok(None),
            Ok(Some((Ok(bytes), g, etag))) => Ok(Some((bytes, g, etag))),
            Ok(Some((Err(size), _, _))) => Err((
                Kind::Damaged,
                format!(
                    "{}: it has {size} bytes, more than the {} a manifest can have",
                    self.url_of(MANIFEST),
                    super::MAX_MANIFEST_BYTES
                ),
            )),
            Err(e) => Err(b.explain(&format!("cannot read {}", self.url_of(MANIFEST)), &e)),
        }
    }

    pub(crate) fn url_of(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket_name, self.key(name))
    }

    /// Object `name`'s bytes (at most `limit`), `None` if there is none.
    pub(crate) fn get_small(&self, b: &Bucket, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let key = Key::from(self.key(name));
        let client = b.client.clone();
        let r = block_on(async move {
            let g = match client.get_opts(&key, GetOptions::default()).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            if g.meta.size > limit {
                return Ok(Some(Err(g.meta.size)));
            }
            Ok(Some(Ok(g.bytes().await?.to_vec())))
        })?
        .map_err(|e| b.fail(&format!("cannot read {}", self.url_of(name)), &e))?;
        match r {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(n)) => Err(fail(
                Kind::Damaged,
                format!(
                    "{} has {n} bytes, more than the {limit} it can have",
                    self.url_of(name)
                ),
            )),
        }
    }

    /// Whether object `name` exists.
    pub(crate) fn exists(&self, b: &Bucket, name: &str) -> Result<bool> {
        let key = Key::from(self.key(name));
        let client = b.client.clone();
        match block_on(async move { client.head(&key).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(b.fail(&format!("cannot look at {}", self.url_of(name)), &e)),
        }
    }

    /// The "directories" right under the prefix.
    pub(crate) fn list_dirs(&self, b: &Bucket) -> Result<Vec<String>> {
        let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        let client = b.client.clone();
        let r = block_on(async move { client.list_with_delimiter(prefix.as_ref()).await })?
            .map_err(|e| b.fail(&format!("cannot list {}", self.url()), &e))?;
        Ok(r.common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    pub(crate) fn delete_keys(&self, b: &Bucket, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let client = b.client.clone();
        let paths: Vec<object_store::Result<Key>> =
            keys.iter().map(|k| Ok(Key::from(k.as_str()))).collect();
        block_on(async move {
            let mut s = client.delete_stream(futures_util::stream::iter(paths).boxed());
            while let Some(r) = s.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?
        .map_err(|e| b.fail(&format!("cannot delete objects of {}", self.url()), &e))
    }

    pub(crate) fn put_small(
        &self,
        b: &Bucket,
        name: &str,
        bytes: Vec<u8>,
        attrs: Attributes,
    ) -> Result<()> {
        let key = Key::from(self.key(name));
        let client = b.client.clone();
        block_on(async move {
            client
                .put_opts(
                    &key,
                    PutPayload::from(bytes),
                    PutOptions {
                        attributes: attrs,
                        ..PutOptions::default()
                    },
                )
                .await
        })?
        .map(|_| ())
        .map_err(|e| b.fail(&format!("cannot store {}", self.url_of(name)), &e))
    }
}

fn object_attributes(o: &S3Options) -> Attributes {
    let mut a = Attributes::new();
    if let Some(c) = &o.storage_class {
        a.insert(Attribute::StorageClass, c.clone().into());
    }
    a
}

/// The lock object's contents.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct LockInfo {
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) started: u64,
    pub(crate) holder: String,
}

impl LockInfo {
    /// This process, now.
    pub(crate) fn here() -> LockInfo {
        LockInfo {
            host: crate::util::host_name(),
            pid: std::process::id(),
            started: crate::util::now_secs(),
            holder: crate::repo::holder_here(),
        }
    }

    /// Whether its holder may still run (on another host, vdi cannot tell).
    pub(crate) fn live(&self) -> bool {
        self.host != crate::util::host_name() || pid_alive(self.pid)
    }
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    // A lock object is anyone's to write: only a positive pid is looked at.
    let Some(p) = i32::try_from(pid)
        .ok()
        .filter(|&r| r > 0)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // Signal 0: only whether the process exists (EPERM: it does, another user's).
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        format!("S3 location {}", self.url())
    }

    fn properties(&self) -> Properties {
        Properties {
            atomic_replace: true,
            keeps_manifest: true,
            max_streams: crate::format::stream::MAX_DEVICES,
        }
    }

    fn begin(&self, force: bool) -> Result<Box<dyn StoreWriter>> {
        let b = self.bucket()?.clone();
        // One writer per location of a server (tests run many servers in one process).
        let id = format!("{} {}", b.endpoint, self.url());
        {
            let mut w = writing();
            let set = w.get_or_insert_with(HashSet::new);
            if !set.insert(id.clone()) {
                return Err(fail(
                    Kind::SetBusy,
                    format!(
                        "{} is being written by another backup of this process; wait for it to finish",
                        self.url()
                    ),
                ));
            }
        }
        let release = |e: crate::Error| {
            if let Some(s) = writing().as_mut() {
                s.remove(&id);
            }
            e
        };
        let names = self.list_names(&b).map_err(release)?;
        let mut note = None;
        if names.iter().any(|(n, _)| n == LOCK) {
            let info = block_on({
                let client = b.client.clone();
                let key = Key::from(self.key(LOCK));
                async move { client.get(&key).await?.bytes().await }
            })
            .map_err(release)?
            .ok()
            .and_then(|by| serde_json::from_slice::<LockInfo>(&by).ok());
            let here = crate::util::host_name();
            match info {
                Some(i) if i.host == here && !pid_alive(i.pid) => {
                    note = Some(format!(
                        "took over the lock of {} left by process {} (it is gone)",
                        self.url(),
                        i.pid
                    ));
                }
                Some(i) => {
                    return Err(release(fail(
                        Kind::SetBusy,
                        format!(
                            "{} is being written by another backup ({}, since {}); wait for it to finish, or if none runs, remove {}",
                            self.url(),
                            i.holder,
                            i.started,
                            self.url_of(LOCK)
                        ),
                    )));
                }
                None => {
                    return Err(release(fail(
                        Kind::SetBusy,
                        format!(
                            "{} is locked by {} that cannot be read; if no backup runs there, remove it",
                            self.url(),
                            self.url_of(LOCK)
                        ),
                    )));
                }
            }
        }
        if !force && names.iter().any(|(n, _)| n != LOCK) {
            return Err(release(fail(
                Kind::TargetExists,
                format!(
                    "{} already holds a backup (or what an interrupted one left); use --force to replace it",
                    self.url()
                ),
            )));
        }
        let lock = LockInfo::here();
        let bytes = serde_json::to_vec(&lock).map_err(|e| release(e.into()))?;
        // With the objects' attributes: a storage class the server refuses fails here,
        // before the engine starts.
        self.put_small(&b, LOCK, bytes, object_attributes(&self.opts))
            .map_err(release)?;
        let generation = format!(
            "g-{}",
            &crate::format::stream::hex_id(&crate::util::random_id())[..12]
        );
        // Should the process exit at once (a second Ctrl-C), no destructor runs: this
        // removes what the generation stored (unless committed) and the lock.
        let committed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let on_exit = {
            let store = S3StoreRef {
                bucket_name: self.bucket_name.clone(),
                prefix: self.prefix.clone(),
                opts: self.opts.clone(),
                bucket: b.clone(),
            };
            let (committed, generation) = (committed.clone(), generation.clone());
            crate::cancel::before_exit_while(move || {
                let s = store.store();
                let done = committed.load(std::sync::atomic::Ordering::Acquire);
                s.remove_generation_and_lock(&store.bucket, (!done).then_some(generation.as_str()));
            })
        };
        Ok(Box::new(S3Writer {
            committed_flag: committed,
            _on_exit: on_exit,
            store: S3StoreRef {
                bucket_name: self.bucket_name.clone(),
                prefix: self.prefix.clone(),
                opts: self.opts.clone(),
                bucket: b,
            },
            lock_id: id,
            generation,
            tracker: Tracker::default(),
            created: Vec::new(),
            committed: false,
            note,
        }))
    }

    fn open(&self) -> std::result::Result<Box<dyn StoreReader>, BackupError> {
        let b = self
            .bucket()
            .map_err(|e| BackupError::Unreadable(e.to_string()))?
            .clone();
        let m = self.get_manifest(&b);
        let (manifest, generation, etag, damaged) = match m {
            Ok(Some((bytes, g, e))) => (Some(bytes), g, e, None),
            Ok(None) => (None, None, None, None),
            Err((Kind::Damaged, msg)) => (None, None, None, Some(msg)),
            Err((_, msg)) => return Err(BackupError::Unreadable(msg)),
        };
        Ok(Box::new(S3Reader {
            store: S3StoreRef {
                bucket_name: self.bucket_name.clone(),
                prefix: self.prefix.clone(),
                opts: self.opts.clone(),
                bucket: b,
            },
            manifest,
            generation,
            etag,
            damaged,
        }))
    }
}

/// A stored manifest: its bytes, its generation and its ETag.
type Stored = (Vec<u8>, Option<String>, Option<String>);

/// What a writer and a reader keep of their store.
#[derive(Debug)]
struct S3StoreRef {
    bucket_name: String,
    prefix: String,
    opts: S3Options,
    bucket: Bucket,
}

impl S3StoreRef {
    fn store(&self) -> S3Store {
        let s = S3Store {
            bucket_name: self.bucket_name.clone(),
            prefix: self.prefix.clone(),
            opts: self.opts.clone(),
            bucket: OnceLock::new(),
        };
        let _ = s.bucket.set(Ok(self.bucket.clone()));
        s
    }
}

#[derive(Debug)]
struct S3Writer {
    store: S3StoreRef,
    lock_id: String,
    generation: String,
    tracker: Tracker,
    created: Vec<String>,
    committed: bool,
    committed_flag: Arc<std::sync::atomic::AtomicBool>,
    _on_exit: crate::cancel::ExitGuard,
    note: Option<String>,
}

impl StoreWriter for S3Writer {
    fn create(&mut self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        if self.created.iter().any(|n| n == name) {
            return Err(fail(
                Kind::Other,
                format!("object {name} was already created"),
            ));
        }
        if name.contains('/') || name.is_empty() || name == MANIFEST || name == LOCK {
            return Err(fail(
                Kind::Other,
                format!("{name} is not a stream object's name"),
            ));
        }
        self.created.push(name.to_owned());
        let s = self.store.store();
        let key = s.key(&format!("{}/{name}", self.generation));
        let o = S3Object::new(self.store.bucket.clone(), key);
        Ok(self.tracker.track(name, o))
    }

    fn where_(&self, name: &str) -> String {
        format!(
            "in {}",
            self.store
                .store()
                .url_of(&format!("{}/{name}", self.generation))
        )
    }

    fn commit(mut self: Box<Self>, manifest: &[u8]) -> Result<Commit> {
        self.tracker.all_finished()?;
        let s = self.store.store();
        let b = self.store.bucket.clone();
        let old = s.get_manifest(&b).map_err(|(k, m)| fail(k, m))?;
        let replaced = old
            .as_ref()
            .and_then(|(m, _, _)| parse_manifest_any(m).ok())
            .map(|m| m.backup_id);
        let mut attrs = object_attributes(&s.opts);
        attrs.insert(
            Attribute::Metadata(GEN_META.into()),
            self.generation.clone().into(),
        );
        // The manifest last, in one PUT: from here on the backup is the new one.
        s.put_small(&b, MANIFEST, manifest.to_vec(), attrs)?;
        self.committed = true;
        self.committed_flag
            .store(true, std::sync::atomic::Ordering::Release);
        let mut commit = Commit {
            replaced,
            ..Commit::default()
        };
        if let Some(n) = self.note.take() {
            commit.notes.push(n);
        }
        // Then what the old backup (or an interrupted one) left: every object under the
        // prefix but the manifest, this generation and the lock.
        let mine = format!("{}/", self.generation);
        match s.list_names(&b) {
            Ok(names) => {
                let old: Vec<String> = names
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| n != MANIFEST && n != LOCK && !n.starts_with(&mine))
                    .collect();
                if !old.is_empty() {
                    let n = old.len();
                    match s.delete_keys(&b, old.iter().map(|n| s.key(n)).collect()) {
                        Ok(()) => commit.notes.push(format!(
                            "removed {n} object(s) of the backup it replaced from {}",
                            s.url()
                        )),
                        Err(e) => commit.warnings.push(format!(
                            "the new backup is complete, but objects of the one it replaced could not be removed: {e}"
                        )),
                    }
                }
            }
            Err(e) => commit.warnings.push(format!(
                "the new backup is complete, but {} could not be listed to remove the old one's objects: {e}",
                s.url()
            )),
        }
        Ok(commit)
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        let s = self.store.store();
        let generation = (!self.committed).then_some(self.generation.as_str());
        s.remove_generation_and_lock(&self.store.bucket, generation);
        if let Some(set) = writing().as_mut() {
            set.remove(&self.lock_id);
        }
    }
}

impl S3Store {
    /// Deletes what `generation` stored (if given: a backup that did not commit leaves
    /// nothing but the old one) and the lock.
    fn remove_generation_and_lock(&self, b: &Bucket, generation: Option<&str>) {
        if let Some(g) = generation {
            let mine = format!("{g}/");
            if let Ok(names) = self.list_names(b) {
                let keys: Vec<String> = names
                    .into_iter()
                    .filter(|(n, _)| n.starts_with(&mine))
                    .map(|(n, _)| self.key(&n))
                    .collect();
                if let Err(e) = self.delete_keys(b, keys) {
                    tracing::error!("{e}");
                }
            }
        }
        if let Err(e) = self.delete_keys(b, vec![self.key(LOCK)]) {
            tracing::error!("cannot remove the lock {}: {e}", self.url_of(LOCK));
        }
    }
}

// ---------------------------------------------------------------------------------------
// One stream object: a multipart upload of unknown size.

/// The size of part `index` (from 0) of a stream: `first`, doubled after every tenth of
/// `cap` parts, at most 5 GiB.
pub fn part_size(first: u64, cap: u32, index: u32) -> u64 {
    let step = (cap / 10).max(1);
    let doublings = (index / step).min(20);
    first.saturating_mul(1 << doublings).min(MAX_PART)
}

/// The most bytes a stream can have with parts from `first` and at most `cap` of them.
pub fn capacity(first: u64, cap: u32) -> u64 {
    (0..cap)
        .map(|i| part_size(first, cap, i))
        .fold(0u64, u64::saturating_add)
}

type SharedUpload = Arc<Mutex<Option<Box<dyn MultipartUpload>>>>;

fn lock_upload(u: &SharedUpload) -> std::sync::MutexGuard<'_, Option<Box<dyn MultipartUpload>>> {
    u.lock().unwrap_or_else(|e| e.into_inner())
}

struct S3Object {
    bucket: Bucket,
    key: String,
    /// The upload, once started; shared with the hook that aborts it should the process
    /// exit at once (a second Ctrl-C), when no destructor runs.
    upload: SharedUpload,
    /// Parts being uploaded (the exit hook waits for them before it aborts).
    flying: Arc<std::sync::atomic::AtomicUsize>,
    on_exit: Option<crate::cancel::ExitGuard>,
    buf: Vec<u8>,
    parts: u32,
    in_flight: VecDeque<JoinHandle<object_store::Result<()>>>,
    failed: Option<String>,
    done: bool,
    bytes: u64,
    largest_part: u64,
}

impl fmt::Debug for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Object")
            .field("key", &self.key)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl S3Object {
    fn new(bucket: Bucket, key: String) -> S3Object {
        S3Object {
            bucket,
            key,
            upload: Arc::new(Mutex::new(None)),
            flying: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            on_exit: None,
            buf: Vec::new(),
            parts: 0,
            in_flight: VecDeque::new(),
            failed: None,
            done: false,
            bytes: 0,
            largest_part: 0,
        }
    }

    fn url(&self) -> String {
        self.bucket.url(&self.key)
    }

    fn current_part_size(&self) -> u64 {
        let o = &self.bucket.opts;
        part_size(o.part_size, o.part_cap, self.parts)
    }

    fn io_err(&mut self, doing: &str, e: &object_store::Error) -> io::Error {
        let (_, msg) = self.bucket.explain(doing, e);
        self.failed = Some(msg.clone());
        io::Error::other(msg)
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(m) => Err(io::Error::other(m.clone())),
            None => Ok(()),
        }
    }

    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> io::Result<()> {
        let Some(h) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let r = block_on(h).map_err(|e| io::Error::other(e.to_string()))?;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let doing = format!("cannot upload a part of {}", self.url());
                Err(self.io_err(&doing, &e))
            }
            Err(e) => {
                let msg = format!("a part upload of {} failed: {e}", self.url());
                self.failed = Some(msg.clone());
                Err(io::Error::other(msg))
            }
        }
    }

    fn wait_all(&mut self) -> io::Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_one()?;
        }
        Ok(())
    }

    /// Sends the full buffer as the next part.
    fn send_part(&mut self) -> io::Result<()> {
        let o = self.bucket.opts.clone();
        if self.parts >= o.part_cap {
            let msg = format!(
                "{}: the stream is larger than {} parts can hold ({} bytes from {} byte parts): raise --s3-part-cap or --s3-part-size",
                self.url(),
                o.part_cap,
                capacity(o.part_size, o.part_cap),
                o.part_size
            );
            self.failed = Some(msg.clone());
            return Err(io::Error::other(msg));
        }
        if lock_upload(&self.upload).is_none() {
            let client = self.bucket.client.clone();
            let key = Key::from(self.key.as_str());
            let attrs = object_attributes(&o);
            let r = block_on(async move {
                client
                    .put_multipart_opts(
                        &key,
                        PutMultipartOptions {
                            attributes: attrs,
                            ..PutMultipartOptions::default()
                        },
                    )
                    .await
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
            match r {
                Ok(u) => {
                    *lock_upload(&self.upload) = Some(u);
                    let shared = self.upload.clone();
                    let flying = self.flying.clone();
                    let url = self.url();
                    self.on_exit = Some(crate::cancel::before_exit_while(move || {
                        let taken = lock_upload(&shared).take();
                        if let Some(mut u) = taken {
                            // No part starts now (the upload is taken); those in flight
                            // end first (10 s at most), else one may be stored after
                            // the abort.
                            let until = std::time::Instant::now() + Duration::from_secs(10);
                            while flying.load(std::sync::atomic::Ordering::Acquire) > 0
                                && std::time::Instant::now() < until
                            {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            let r = block_on(async move {
                                tokio::time::timeout(Duration::from_secs(10), u.abort()).await
                            });
                            if !matches!(r, Ok(Ok(Ok(())))) {
                                tracing::error!(
                                    "could not abort the unfinished upload of {url}: remove it with aws s3api abort-multipart-upload, or let a lifecycle rule (AbortIncompleteMultipartUpload) remove it"
                                );
                            }
                        }
                    }));
                }
                Err(e) => {
                    let doing = format!("cannot start the upload of {}", self.url());
                    return Err(self.io_err(&doing, &e));
                }
            }
        }
        // The bytes in flight stay within parts_in_flight first-size parts: as the parts
        // grow, fewer of them fly at once (never fewer than one).
        let size = self.buf.len() as u64;
        let budget = o.part_size.saturating_mul(o.parts_in_flight as u64);
        let limit = usize::try_from(budget / size.max(1))
            .unwrap_or(usize::MAX)
            .clamp(1, o.parts_in_flight);
        while self.in_flight.len() >= limit {
            self.wait_one()?;
        }
        let data = std::mem::take(&mut self.buf);
        self.largest_part = self.largest_part.max(data.len() as u64);
        let payload = PutPayload::from(Bytes::from(data));
        let fut = {
            let mut g = lock_upload(&self.upload);
            let Some(upload) = g.as_mut() else {
                return Err(io::Error::other(format!(
                    "the upload of {} was aborted",
                    self.url()
                )));
            };
            upload.put_part(payload)
        };
        let rt = runtime().map_err(|e| io::Error::other(e.to_string()))?;
        let flying = self.flying.clone();
        flying.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.in_flight.push_back(rt.spawn(async move {
            let r = fut.await;
            flying.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            r
        }));
        self.parts += 1;
        Ok(())
    }
}

impl Write for S3Object {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        self.check()?;
        if self.done {
            return Err(io::Error::other(format!(
                "{} is already finished",
                self.url()
            )));
        }
        let n = data.len();
        while !data.is_empty() {
            let part = usize::try_from(self.current_part_size()).unwrap_or(usize::MAX);
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(part);
            }
            let take = (part - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= part {
                self.send_part()?;
            }
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Object {
    /// Waits until every part sent is stored; the part being filled is stored at
    /// [`finish`](ObjectWriter::finish) (an object in S3 exists only once complete).
    fn sync(&mut self) -> io::Result<()> {
        self.check()?;
        self.wait_all()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.check()?;
        if self.done {
            return Ok(());
        }
        if lock_upload(&self.upload).is_none() {
            // Smaller than one part: one PUT.
            let data = std::mem::take(&mut self.buf);
            let client = self.bucket.client.clone();
            let key = Key::from(self.key.as_str());
            let attrs = object_attributes(&self.bucket.opts);
            let r = block_on(async move {
                client
                    .put_opts(
                        &key,
                        PutPayload::from(data),
                        PutOptions {
                            attributes: attrs,
                            ..PutOptions::default()
                        },
                    )
                    .await
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
            if let Err(e) = r {
                let doing = format!("cannot store {}", self.url());
                return Err(self.io_err(&doing, &e));
            }
            self.done = true;
            tracing::debug!("stored {} ({} bytes) in one PUT", self.url(), self.bytes);
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        self.wait_all()?;
        let taken = lock_upload(&self.upload).take();
        let Some(mut upload) = taken else {
            return Err(io::Error::other(format!(
                "the upload of {} was aborted",
                self.url()
            )));
        };
        let r = block_on(async move {
            let r = upload.complete().await;
            (r, upload)
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
        match r {
            (Ok(_), _) => {
                self.done = true;
                self.on_exit.take();
                tracing::debug!(
                    "stored {} ({} bytes) in {} parts, the largest {} bytes",
                    self.url(),
                    self.bytes,
                    self.parts,
                    self.largest_part
                );
                Ok(())
            }
            (Err(e), upload) => {
                // Put back, so that the drop aborts it.
                *lock_upload(&self.upload) = Some(upload);
                let doing = format!("cannot complete the upload of {}", self.url());
                Err(self.io_err(&doing, &e))
            }
        }
    }
}

impl Drop for S3Object {
    fn drop(&mut self) {
        let mut in_flight: Vec<_> = self.in_flight.drain(..).collect();
        // The parts in flight end first (stored or failed, 30 s at most): a part the
        // server is still receiving when the upload is aborted may be stored after the
        // abort and kept (S3 says to abort again then), so the abort comes after them.
        // Meanwhile the upload stays where the exit hook finds it (a second Ctrl-C).
        if lock_upload(&self.upload).is_some() && !in_flight.is_empty() {
            let _ = block_on(async {
                let all = futures_util::future::join_all(in_flight.iter_mut());
                let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
            });
        }
        for h in in_flight {
            h.abort();
        }
        // Aborted with the lock held: an exit hook (a second Ctrl-C) waits for this abort
        // instead of exiting in the middle of it.
        let url = self.url();
        let mut guard = lock_upload(&self.upload);
        let Some(upload) = guard.as_mut() else {
            drop(guard);
            self.on_exit.take();
            return;
        };
        // (The timer is made inside the runtime: made outside, it panics.)
        let r =
            block_on(async { tokio::time::timeout(Duration::from_secs(30), upload.abort()).await });
        guard.take();
        drop(guard);
        self.on_exit.take();
        let why = match r {
            Ok(Ok(Ok(()))) => {
                tracing::debug!("aborted the upload of {url}");
                return;
            }
            Ok(Ok(Err(e))) => self.bucket.creds.scrub(&chain(&e)),
            Ok(Err(_)) => "no answer within 30 s".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::error!(
            "could not abort the unfinished upload of {url} ({}): its parts stay in bucket {} (and cost storage) until it is aborted; list them with aws s3api list-multipart-uploads --bucket {}, or let a lifecycle rule (AbortIncompleteMultipartUpload) remove them",
            short(&why),
            self.bucket.name,
            self.bucket.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reading.

#[derive(Debug)]
struct S3Reader {
    store: S3StoreRef,
    manifest: Option<Vec<u8>>,
    generation: Option<String>,
    etag: Option<String>,
    damaged: Option<String>,
}

impl S3Reader {
    fn object_key(&self, s: &S3Store, name: &str) -> String {
        match &self.generation {
            Some(g) => s.key(&format!("{g}/{name}")),
            None => s.key(name),
        }
    }
}

impl StoreReader for S3Reader {
    fn place(&self) -> String {
        self.store.store().url()
    }

    fn place_of(&self, name: &str) -> String {
        self.store.store().url_of(name)
    }

    fn read_manifest(&self) -> std::result::Result<Option<Vec<u8>>, BackupError> {
        if let Some(d) = &self.damaged {
            return Err(BackupError::BadManifest {
                place: self.place_of(MANIFEST),
                what: d.clone(),
            });
        }
        Ok(self.manifest.clone())
    }

    fn open(&self, name: &str) -> std::result::Result<Object, String> {
        if name.contains('/') || name.is_empty() {
            return Err("is not an object name of this backup".into());
        }
        let s = self.store.store();
        let key = self.object_key(&s, name);
        let b = self.store.bucket.clone();
        let client = b.client.clone();
        let path = Key::from(key.as_str());
        let r = block_on(async move { client.head(&path).await }).map_err(|e| e.to_string())?;
        let meta = match r {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Err("is missing".into()),
            Err(e) => {
                return Err(format!(
                    "cannot be read: {}",
                    b.explain(&format!("HEAD {}", b.url(&key)), &e).1
                ));
            }
        };
        Ok(Object {
            len: Some(meta.size),
            reader: Box::new(RangedReader {
                bucket: b,
                key,
                len: meta.size,
                next: 0,
                queue: VecDeque::new(),
                current: Bytes::new(),
            }),
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let s = self.store.store();
        let names = s
            .list_names(&self.store.bucket)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let dir = self.generation.as_ref().map(|g| format!("{g}/"));
        Ok(names
            .into_iter()
            .filter_map(|(n, _)| match &dir {
                Some(d) => n.strip_prefix(d.as_str()).map(str::to_owned),
                None => (!n.contains('/') && n != LOCK).then_some(n),
            })
            .collect())
    }

    fn still_current(&self) -> bool {
        let s = self.store.store();
        match s.get_manifest(&self.store.bucket) {
            Ok(Some((_, _, etag))) => self.manifest.is_some() && etag == self.etag,
            Ok(None) => self.manifest.is_none(),
            Err(_) => false,
        }
    }
}

/// An object read with ranged GETs, several ahead of the reader.
struct RangedReader {
    bucket: Bucket,
    key: String,
    len: u64,
    /// The next offset to ask for.
    next: u64,
    queue: VecDeque<JoinHandle<object_store::Result<Bytes>>>,
    current: Bytes,
}

impl RangedReader {
    fn fill_queue(&mut self) -> io::Result<()> {
        let o = &self.bucket.opts;
        let rt = runtime().map_err(|e| io::Error::other(e.to_string()))?;
        while self.queue.len() < o.read_ahead && self.next < self.len {
            let end = (self.next + o.read_size).min(self.len);
            let client = self.bucket.client.clone();
            let key = Key::from(self.key.as_str());
            let range = self.next..end;
            self.queue
                .push_back(rt.spawn(async move { client.get_range(&key, range).await }));
            self.next = end;
        }
        Ok(())
    }
}

impl Read for RangedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            self.fill_queue()?;
            let Some(h) = self.queue.pop_front() else {
                return Ok(0);
            };
            let r = block_on(h)
                .map_err(|e| io::Error::other(e.to_string()))?
                .map_err(|e| io::Error::other(e.to_string()))?;
            match r {
                Ok(b) if b.is_empty() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ended before its {} bytes",
                            self.bucket.url(&self.key),
                            self.len
                        ),
                    ));
                }
                Ok(b) => self.current = b,
                Err(e) => {
                    let (_, msg) = self
                        .bucket
                        .explain(&format!("cannot read {}", self.bucket.url(&self.key)), &e);
                    return Err(io::Error::other(msg));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

impl Drop for RangedReader {
    fn drop(&mut self) {
        for h in self.queue.drain(..) {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://bkt/a/b/").unwrap(),
            ("bkt".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        assert!(parse_url("s3://B/x").is_err());
        assert!(parse_url("s3://bkt/a/../b").is_err());
        assert!(parse_url("/x").is_err());
    }

    #[test]
    fn parts_grow_so_that_a_stream_fits_the_cap() {
        // 20 parts from 5 MiB: two of each size, doubling.
        assert_eq!(part_size(MIN_PART, 20, 0), MIN_PART);
        assert_eq!(part_size(MIN_PART, 20, 2), 2 * MIN_PART);
        assert_eq!(part_size(MIN_PART, 20, 19), 512 * MIN_PART);
        assert!(capacity(MIN_PART, 20) > 5 << 30);
        // S3's 10,000 from 8 MiB hold more than S3's 5 TiB object.
        assert!(capacity(8 << 20, 10_000) > 5 << 40);
        assert!(capacity(MIN_PART, 1_000) > 400 << 30);
        assert_eq!(part_size(8 << 20, 10_000, 9_999), 4 << 30);
    }

    #[test]
    fn ini_profiles() {
        let t = "[default]\naws_access_key_id = A\n[other]\n aws_access_key_id=B\naws_secret_access_key = S\n";
        let p = ini_section(t, "other").unwrap();
        assert_eq!(ini_get(&p, "aws_access_key_id").as_deref(), Some("B"));
        assert_eq!(ini_get(&p, "aws_secret_access_key").as_deref(), Some("S"));
        assert!(ini_section(t, "none").is_none());
    }

    #[test]
    fn a_lock_of_a_strange_pid_is_not_alive() {
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn credentials_are_scrubbed() {
        let c = Credentials {
            key_id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI".into(),
            token: None,
            from: "x".into(),
        };
        assert_eq!(
            c.scrub("key AKIDEXAMPLE secret wJalrXUtnFEMI"),
            "key *** secret ***"
        );
        assert!(!format!("{c:?}").contains("wJal"));
    }
}
