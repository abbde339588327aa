//! `vdi verify`: checks a stored backup without restoring it (every stream's structure,
//! checksums, digest and size, and that the streams together hold the whole source).

use std::io::Read;

use crate::codec::StreamReader;
use crate::format::manifest::{BackupError, Compression, Manifest};
use crate::format::stream::{self, Decoder, DeviceStream, NullSink};
use crate::store::{OpenedBackup, Store, open_backup};

/// The outcome of [`verify_dir`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// The manifest, if it could be read.
    pub manifest: Option<Manifest>,
    /// Everything found wrong, one sentence each.
    pub problems: Vec<String>,
    /// Source bytes in the backup (when every stream decoded).
    pub source_bytes: Option<u64>,
    /// Chunks checked.
    pub chunks: u64,
    /// Stream bytes read.
    pub stream_bytes: u64,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What reading one stored stream through found.
#[derive(Debug)]
pub struct StreamCheck {
    /// The decoded stream, if it decoded without a problem.
    pub stream: Option<DeviceStream>,
    /// The first problem found in the stream's structure or checksums.
    pub problem: Option<String>,
    /// blake3 of the (uncompressed) bytes read.
    pub digest: String,
    /// Stream bytes read.
    pub stream_bytes: u64,
    /// Chunks that matched their checksums.
    pub chunks: u64,
}

/// Reads one stored stream through and checks everything that can be checked of it on
/// its own (structure, every checksum, the trailer); the digest and byte count cover
/// the whole stream even past a problem.
pub fn check_stream(
    media: Box<dyn Read + Send>,
    compression: Option<Compression>,
    device: Option<u32>,
) -> Result<StreamCheck, String> {
    check_sealed_stream(media, compression, None, device)
}

/// [`check_stream`] of a stream encrypted as `seal` says (if at all).
pub fn check_sealed_stream(
    media: Box<dyn Read + Send>,
    compression: Option<Compression>,
    seal: Option<crate::codec::Sealing>,
    device: Option<u32>,
) -> Result<StreamCheck, String> {
    let mut r = match compression {
        Some(c) => StreamReader::sealed(media, c, seal, true),
        None => StreamReader::detect(media),
    }
    .map_err(|e| format!("cannot read: {e}"))?;
    let mut dec = Decoder::new(device);
    let mut problem = None;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read_full(&mut buf)
            .map_err(|e| format!("unreadable after {} stream bytes: {e}", r.stream_bytes()))?;
        if problem.is_none()
            && let Err(e) = dec.feed(&buf[..n], &mut NullSink)
        {
            problem = Some(e.to_string());
        }
        if n < buf.len() {
            break;
        }
    }
    let chunks = dec.chunks_decoded();
    let stream = if problem.is_none() {
        match dec.finish() {
            Ok(d) => Some(d),
            Err(e) => {
                problem = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    Ok(StreamCheck {
        stream,
        problem,
        digest: r.digest(),
        stream_bytes: r.stream_bytes(),
        chunks,
    })
}

/// Checks the backup `store` holds without restoring it: the manifest and its
/// completion marker, every stream present with its recorded size and digest, every
/// chunk's checksum, every trailer, that the streams together hold the whole source, and
/// that the store holds no stream the manifest does not list.
pub fn verify(store: &dyn Store) -> Result<VerifyReport, BackupError> {
    verify_with(store, None)
}

/// [`verify`], with the key or passphrase of an encrypted backup (without it, or with a
/// wrong one: [`BackupError::Key`], saying which option to give).
pub fn verify_with(
    store: &dyn Store,
    secret: Option<&crate::seal::Secret>,
) -> Result<VerifyReport, BackupError> {
    let OpenedBackup {
        reader,
        manifest: m,
        streams: files,
    } = open_backup(store)?;
    let keys = crate::seal::unlock_backup(&m, secret, &reader.place())?;
    let mut report = VerifyReport::default();
    let results: Vec<Result<StreamCheck, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = m
            .streams
            .iter()
            .zip(files)
            .map(|(e, f)| {
                let m = &m;
                let seal = keys.as_ref().map(|k| crate::codec::Sealing {
                    keys: k.clone(),
                    device: e.device,
                });
                s.spawn(move || {
                    let f = f?;
                    check_sealed_stream(f.reader, Some(m.compression), seal, Some(e.device))
                        .map_err(|p| format!("stream file {} (device {}): {p}", e.file, e.device))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a checking thread panicked".to_owned()))
            })
            .collect()
    });
    let mut decoded = Vec::new();
    for (e, r) in m.streams.iter().zip(results) {
        let c = match r {
            Ok(c) => c,
            Err(p) => {
                report.problems.push(p);
                continue;
            }
        };
        report.stream_bytes += c.stream_bytes;
        report.chunks += c.chunks;
        if let Some(p) = &c.problem {
            report
                .problems
                .push(format!("stream file {} (device {}): {p}", e.file, e.device));
        }
        if c.stream_bytes != e.stream_bytes {
            report.problems.push(format!(
                "stream file {} (device {}): {} stream bytes, the manifest records {}",
                e.file, e.device, c.stream_bytes, e.stream_bytes
            ));
        }
        if c.digest != e.blake3 {
            report.problems.push(format!(
                "stream file {} (device {}): blake3 {} does not match the manifest's {}",
                e.file, e.device, c.digest, e.blake3
            ));
        }
        if let Some(d) = c.stream {
            if let Some(id) = &m.stream_id
                && *id != stream::hex_id(&d.header.stream_id)
            {
                report.problems.push(format!(
                    "stream file {} (device {}) belongs to backup {}, the manifest to {id}",
                    e.file,
                    e.device,
                    stream::hex_id(&d.header.stream_id)
                ));
            }
            decoded.push(d);
        }
    }
    if decoded.len() == m.streams.len() {
        match stream::check_set(&decoded) {
            Ok(sum) => report.source_bytes = Some(sum.total_bytes),
            Err(e) => report
                .problems
                .push(format!("the streams do not fit together: {e}")),
        }
    }
    let listed: Vec<&str> = m.streams.iter().map(|s| s.file.as_str()).collect();
    if let Ok(names) = reader.list() {
        for name in names {
            if crate::store::dir::is_stream_file_name(&name) && !listed.contains(&name.as_str()) {
                report.problems.push(format!(
                    "{name} is not part of this backup (the manifest lists {} streams)",
                    m.device_count
                ));
            }
        }
    }
    report.manifest = Some(m);
    Ok(report)
}

/// Checks the backup directory `dir` ([`verify`] of a [`DirStore`](crate::store::dir::DirStore)).
pub fn verify_dir(dir: &std::path::Path) -> Result<VerifyReport, BackupError> {
    verify(&crate::store::dir::DirStore::new(
        dir,
        crate::store::dir::Modes::DEFAULT,
    ))
}
