//! The configuration file: `~/.config/vdi/config.toml` (`$XDG_CONFIG_HOME/vdi/config.toml`),
//! another one with `--config FILE` or `VDI_CONFIG`, none with `VDI_CONFIG=none`.
//!
//! ```toml
//! repository = "/backups/shop"   # REPO when a command is given none (VDI_REPOSITORY)
//!
//! [store]
//! profile = "backup"             # the credentials profile of an object store (VDI_STORE_PROFILE)
//! endpoint = "https://s3.example.net"  # --s3-endpoint; also region, addressing,
//! part_cap = 1000                # storage_class, sse, ca_file, part_size, parts_in_flight
//!
//! [backup]                       # defaults of vdi backup's options
//! devices = 4
//! compress = "zstd:3"
//! mode = "640"
//! stall_timeout = "10m"
//!
//! [databases]                    # what vdi sql / sqlcmd's BACKUP DATABASE NAME names
//! shop = "sqlite:/srv/shop.db"
//!
//! [expire]                       # defaults of vdi expire's rules
//! keep_daily = 7
//! keep_last = 3
//! keep_within = "30d"
//! ```
//!
//! What wins: the command line, then the environment (`VDI_REPOSITORY`,
//! `VDI_STORE_PROFILE`), then the file, then vdi's own defaults.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file's contents.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The repository commands use when given none.
    pub repository: Option<String>,
    /// The store's settings.
    #[serde(default)]
    pub store: StoreCfg,
    /// Defaults of `vdi backup`.
    #[serde(default)]
    pub backup: BackupCfg,
    /// Defaults of `vdi expire`.
    #[serde(default)]
    pub expire: ExpireCfg,
    /// The test engine's catalog: database name to source (`vdi sql`, `sqlcmd`).
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, String>,
}

/// `[store]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreCfg {
    /// The credentials profile of an object store.
    pub profile: Option<String>,
    /// `--s3-endpoint`.
    pub endpoint: Option<String>,
    /// `--s3-region`.
    pub region: Option<String>,
    /// `--s3-addressing` (`path` or `virtual`).
    pub addressing: Option<String>,
    /// `--s3-storage-class`.
    pub storage_class: Option<String>,
    /// `--s3-sse` (`s3` or `kms:KEY-ID`).
    pub sse: Option<String>,
    /// `--s3-ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--s3-part-cap`.
    pub part_cap: Option<u32>,
    /// `--s3-part-size`.
    pub part_size: Option<String>,
    /// `--s3-parts-in-flight`.
    pub parts_in_flight: Option<u32>,
}

/// `[backup]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupCfg {
    /// `--devices`.
    pub devices: Option<u32>,
    /// `--compress`.
    pub compress: Option<String>,
    /// `--mode`.
    pub mode: Option<String>,
    /// `--stall-timeout`.
    pub stall_timeout: Option<String>,
}

/// `[expire]`, parsed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExpireCfg {
    /// `--keep-last`.
    pub keep_last: Option<u32>,
    /// `--keep-daily`.
    pub keep_daily: Option<u32>,
    /// `--keep-within`.
    #[serde(skip)]
    pub keep_within: Option<Duration>,
    /// `--keep-within` as written.
    #[serde(rename = "keep_within")]
    pub keep_within_text: Option<String>,
}

impl<'de> Deserialize<'de> for ExpireCfg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            keep_last: Option<u32>,
            keep_daily: Option<u32>,
            keep_within: Option<String>,
        }
        let r = Raw::deserialize(d)?;
        let keep_within = r
            .keep_within
            .as_deref()
            .map(crate::cli::parse_duration)
            .transpose()
            .map_err(|e| serde::de::Error::custom(format!("keep_within: {e}")))?;
        Ok(ExpireCfg {
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_within,
            keep_within_text: r.keep_within,
        })
    }
}

/// Where the configuration came from.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The file looked for (when none was read).
    pub looked_for: Option<PathBuf>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// The default file: `$XDG_CONFIG_HOME/vdi/config.toml` or `~/.config/vdi/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("vdi").join("config.toml"))
}

/// `--config FILE` or `--config=FILE` among the arguments (before clap parses them: the
/// file gives the defaults clap shows and uses).
fn config_arg(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Reads the configuration (once): `--config`, else `VDI_CONFIG`, else the default file
/// if it exists. `VDI_CONFIG=none` reads none (the engine `vdi backup` starts reads none).
pub fn load(args: &[std::ffi::OsString]) -> Result<&'static Loaded, String> {
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let explicit = config_arg(args).or_else(|| std::env::var_os("VDI_CONFIG").map(PathBuf::from));
    let loaded = match explicit {
        Some(p) if p.as_os_str() == "none" => Loaded::default(),
        Some(p) => read(&p, true)?,
        None => match default_path() {
            Some(p) => read(&p, false)?,
            None => Loaded::default(),
        },
    };
    Ok(LOADED.get_or_init(|| loaded))
}

fn read(p: &std::path::Path, must: bool) -> Result<Loaded, String> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must => {
            return Ok(Loaded {
                looked_for: Some(p.to_owned()),
                ..Loaded::default()
            });
        }
        Err(e) => {
            return Err(format!(
                "cannot read the configuration file {}: {e}",
                p.display()
            ));
        }
    };
    let config: Config = toml::from_str(&text).map_err(|e| {
        format!(
            "the configuration file {} is not valid: {}",
            p.display(),
            e.to_string().trim_end()
        )
    })?;
    if let Some(c) = &config.backup.compress {
        vdi_backup::format::manifest::Compression::parse(c)
            .map_err(|e| format!("{}: [backup] compress: {e}", p.display()))?;
    }
    if let Some(m) = &config.backup.mode {
        vdi_backup::store::dir::Modes::parse(m)
            .map_err(|e| format!("{}: [backup] mode: {e}", p.display()))?;
    }
    if let Some(s) = &config.backup.stall_timeout {
        crate::cli::parse_duration(s)
            .map_err(|e| format!("{}: [backup] stall_timeout: {e}", p.display()))?;
    }
    if let Some(n) = config.backup.devices
        && !(1..=64).contains(&n)
    {
        return Err(format!(
            "{}: [backup] devices: {n}: use 1 to 64",
            p.display()
        ));
    }
    Ok(Loaded {
        config,
        file: Some(p.to_owned()),
        looked_for: None,
    })
}

/// The configuration in force (empty before [`load`]).
pub fn get() -> &'static Config {
    static EMPTY: OnceLock<Config> = OnceLock::new();
    LOADED
        .get()
        .map(|l| &l.config)
        .unwrap_or_else(|| EMPTY.get_or_init(Config::default))
}

/// The repository: the one `given`, else `VDI_REPOSITORY`, else the file's.
pub fn repository(given: Option<&str>) -> Option<String> {
    repository_with_source(given).map(|(r, _)| r)
}

/// The repository and where it came from (`command line`, `VDI_REPOSITORY`, the file).
pub fn repository_with_source(given: Option<&str>) -> Option<(String, String)> {
    if let Some(g) = given {
        return Some((g.to_owned(), "the command line".into()));
    }
    if let Some(v) = std::env::var("VDI_REPOSITORY")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return Some((v, "VDI_REPOSITORY".into()));
    }
    let l = LOADED.get()?;
    let r = l.config.repository.clone()?;
    Some((
        r,
        l.file
            .as_ref()
            .map_or_else(|| "the configuration".into(), |f| f.display().to_string()),
    ))
}

/// The store's credentials profile: `VDI_STORE_PROFILE`, else the file's.
pub fn store_profile() -> Option<String> {
    std::env::var("VDI_STORE_PROFILE")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| get().store.profile.clone())
}

/// The command line's definition with the file's defaults in place of vdi's own.
pub fn apply_defaults(cmd: clap::Command) -> clap::Command {
    let b = &get().backup;
    let mut defaults: Vec<(&'static str, String)> = Vec::new();
    if let Some(n) = b.devices {
        defaults.push(("devices", n.to_string()));
    }
    if let Some(c) = &b.compress {
        defaults.push(("compress", c.clone()));
    }
    if let Some(m) = &b.mode {
        defaults.push(("mode", m.clone()));
    }
    if let Some(s) = &b.stall_timeout {
        defaults.push(("stall_timeout", s.clone()));
    }
    if defaults.is_empty() {
        return cmd;
    }
    cmd.mut_subcommand("backup", |mut c| {
        for (id, v) in defaults {
            c = c.mut_arg(id, |a| a.default_value(v));
        }
        c
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_parses_and_unknown_keys_are_refused() {
        let c: Config = toml::from_str(
            "repository = \"/r\"\n[store]\nprofile = \"p\"\n[backup]\ndevices = 4\ncompress = \"zstd:3\"\n[expire]\nkeep_daily = 7\nkeep_within = \"30d\"\n",
        )
        .unwrap();
        assert_eq!(c.repository.as_deref(), Some("/r"));
        assert_eq!(c.backup.devices, Some(4));
        assert_eq!(c.expire.keep_daily, Some(7));
        assert_eq!(c.expire.keep_within, Some(Duration::from_secs(30 * 86_400)));
        assert!(toml::from_str::<Config>("repo = \"/r\"\n").is_err());
        assert!(toml::from_str::<Config>("[expire]\nkeep_within = \"soon\"\n").is_err());
    }

    #[test]
    fn the_config_argument_is_found_before_parsing() {
        let a = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_arg(&a(&["vdi", "--config", "x.toml", "list"])),
            Some(PathBuf::from("x.toml"))
        );
        assert_eq!(
            config_arg(&a(&["vdi", "list", "--config=y"])),
            Some(PathBuf::from("y"))
        );
        assert_eq!(
            config_arg(&a(&["vdi", "list", "--", "--config", "z"])),
            None
        );
    }
}
