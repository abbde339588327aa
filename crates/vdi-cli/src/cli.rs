//! The command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vdi_backup::format::manifest::Compression;
use vdi_backup::store::dir::Modes;
use vdi_backup::units::parse_size;

use vdi_backup::fault::Fault;

/// Back up and restore real data through the SQL Server Virtual Device Interface (VDI).
///
/// `vdi` is a backup application (the VDI client role) and a reference engine (the
/// server role) in one program: `vdi backup` creates a virtual device set, starts the
/// engine as a separate process, and stores what the engine streams through each device.
#[derive(Debug, Parser)]
#[command(
    name = "vdi",
    version = crate::LONG_VERSION,
    propagate_version = true,
    after_help = main_after_help(),
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Read this configuration file instead of ~/.config/vdi/config.toml (also:
    /// VDI_CONFIG; none reads none).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Say more: -v shows each phase (configure, stream, commit) with its duration, -vv
    /// debugging detail (or set RUST_LOG, e.g. RUST_LOG=vdi_backup=debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How s3://BUCKET/PREFIX destinations and backups are reached.
    #[command(flatten)]
    pub s3: S3Args,
}

/// Options of `s3://BUCKET/PREFIX` destinations and backups (object storage). Credentials
/// come from the environment as for the AWS tools: AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or AWS_PROFILE and the shared credentials
/// file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials); never on the command line.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Object storage (s3://BUCKET/PREFIX)")]
pub struct S3Args {
    /// The S3 endpoint, e.g. http://127.0.0.1:9000 (also AWS_ENDPOINT_URL_S3,
    /// AWS_ENDPOINT_URL; default AWS's).
    #[arg(
        long = "s3-endpoint",
        alias = "endpoint",
        global = true,
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// The region (also AWS_REGION, AWS_DEFAULT_REGION, the profile's; default us-east-1).
    #[arg(long = "s3-region", global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// The credentials profile of ~/.aws/credentials (also AWS_PROFILE, [store] profile in
    /// the configuration file; default: default).
    #[arg(long = "s3-profile", global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Addressing: path (host/BUCKET/KEY, what S3-compatible servers expect) or virtual
    /// (BUCKET.host/KEY).
    #[arg(long = "s3-addressing", global = true, value_name = "STYLE", value_parser = ["path", "virtual"])]
    pub addressing: Option<String>,
    /// The storage class of the objects written (STANDARD, STANDARD_IA, GLACIER_IR, ...).
    #[arg(long = "s3-storage-class", global = true, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Server-side encryption: s3 (SSE-S3, AES256) or kms:KEY-ID (SSE-KMS).
    #[arg(long = "s3-sse", global = true, value_name = "s3|kms:KEY-ID")]
    pub sse: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's, for an endpoint with its own CA.
    #[arg(long = "s3-ca-file", global = true, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The most parts of one stream's multipart upload (S3: 10000; some providers 1000);
    /// parts grow as the stream grows so that any stream fits.
    #[arg(long = "s3-part-cap", global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub part_cap: Option<u32>,
    /// The first part size (at least 5M; default 8M).
    #[arg(long = "s3-part-size", global = true, value_name = "SIZE", value_parser = parse_size)]
    pub part_size: Option<u64>,
    /// Parts of one stream uploaded at a time (default 4): memory is at most part size x
    /// (this + 1) per device; also the ranged GETs read ahead on restore and verify.
    #[arg(long = "s3-parts-in-flight", global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parts_in_flight: Option<u32>,
    /// Retries of a request that failed transiently (5xx, throttling, a reset; default 5).
    #[arg(long = "s3-retries", global = true, value_name = "N")]
    pub retries: Option<usize>,
    /// How long one request is retried at most (default 60s).
    #[arg(long = "s3-retry-timeout", global = true, value_name = "TIME", value_parser = parse_duration)]
    pub retry_timeout: Option<Duration>,
    /// Do not send a SHA-256 checksum with each part (for a server that refuses them).
    #[arg(long = "s3-no-checksum", global = true)]
    pub no_checksum: bool,
}

/// `vdi --help`'s closing part: the examples and the exit-code table (the one table the
/// README shows too).
pub fn main_after_help() -> String {
    format!(
        "Examples:\n  vdi demo\n  vdi init /backups/shop\n  vdi backup sqlite:shop.db /backups/shop --devices 4 --compress zstd\n  vdi list /backups/shop\n  vdi restore /backups/shop:latest sqlite:shop-restored.db\n  vdi expire /backups/shop --keep-daily 7\n  vdi backup file:disk.img - > disk.vdis\n  vdi backup 'postgres:host=/var/run/postgresql user=backup' /backups/pg --devices 4\n  vdi restore /backups/pg:latest postgres-data:/srv/pg/restored\n  vdi backup dir:/srv/www /backups/www && vdi restore /backups/www:latest dir:/srv/www-copy\n  vdi backup 'cmd:pg_dump -Fc shop' /backups/dump\n  AWS_PROFILE=backup vdi backup sqlite:shop.db s3://backups/shop --devices 4\n  vdi restore s3://backups/shop sqlite:shop-restored.db --s3-endpoint https://s3.example.net\n  vdi soak --duration 10m   # back up, verify, restore, compare, in a loop\n\nSOURCE and TARGET: sqlite:PATH (a live SQLite database), file:PATH (a plain file;\na path without a prefix is a file too), dir:PATH (a directory tree, as a tar\nstream), cmd:PROGRAM ARGS (what a program writes on its output, or its input on\nrestore; its exit status is the verdict), postgres:CONNINFO (a running PostgreSQL\nserver, through pg_basebackup; restored with postgres-data:DIR), - (standard input\nor output).\nDEST and BACKUP: a repository (vdi init REPO; REPO:latest, REPO:ID), a directory\nholding one plain backup, s3://BUCKET/PREFIX (one backup in S3-compatible object\nstorage: credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN\nor AWS_PROFILE and ~/.aws/credentials, AWS_REGION, AWS_ENDPOINT_URL; see the\n--s3-* options), or - (standard output or input).\n\nExit codes:\n{}",
        vdi_backup::Kind::exit_code_table(80).trim_end()
    )
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Back up SOURCE into DEST through VDI (the engine runs as a separate process).
    #[command(after_help = concat!(
        "DEST is a directory (one stream file per device, and manifest.json written last,\n",
        "once every stream is durable) or - for a single-device stream on standard output.\n",
        "A sqlite: SOURCE may be in use: the engine reads the pages of one committed state\n",
        "straight into the VDI buffers, under a read transaction (no copy in $TMPDIR;\n",
        "writers of a rollback-journal database wait for it, as for sqlite3 .backup).\n",
        "A dir: SOURCE is a tar stream of the tree (modes, owners, links, sparse files,\n",
        "extended attributes). A cmd: SOURCE runs the program without a shell (write\n",
        "sh -c '...' for one) in the engine: its standard output is backed up, and a\n",
        "non-zero exit or a signal fails the backup with its last lines of standard error.\n",
        "Its words are recorded in the manifest and the catalog (and shown by ps): give\n",
        "secrets through the environment or a file, never as an argument.\n",
        "A postgres: SOURCE runs pg_basebackup (tar, WAL fetched into it, its\n",
        "backup_manifest kept; one tablespace; needs a role with REPLICATION; no password\n",
        "in CONNINFO: use ~/.pgpass). See docs/postgres.md.\n",
        "A - SOURCE (standard input) is an unchecked stream: vdi stores everything that arrives\n",
        "until its end, but cannot tell a producer that finished from one that was killed in\n",
        "the middle; the manifest records the source as unchecked (\"checked\": false), and\n",
        "backup and verify say so. Check the producer's exit status (set -o pipefail).\n",
        "DEST is made 0700 with files 0600 (see --mode), and locked while the backup runs:\n",
        "a second backup into it is refused (exit 7). With --force, a backup in DEST is\n",
        "replaced only once the new one is complete. vdi follows no symbolic link in DEST.\n\n",
        "Examples:\n",
        "  vdi backup sqlite:shop.db backups/shop\n",
        "  vdi backup file:disk.img backups/disk --devices 4 --compress zstd:6\n",
        "  vdi backup file:disk.img - | ssh vault 'cat > disk.vdis'\n",
        "  vdi backup dir:/srv/www backups/www --devices 2\n",
        "  vdi backup 'postgres:host=/var/run/postgresql port=5432 user=backup' backups/pg\n",
        "  vdi backup 'cmd:sh -c \"mysqldump shop | zstd\"' backups/shop-sql\n",
        "  tar c src | vdi backup - backups/src --json"
    ))]
    Backup(BackupArgs),
    /// Restore the backup BACKUP into TARGET through VDI (the engine reads it with Read
    /// commands and rebuilds TARGET).
    #[command(after_help = concat!(
        "TARGET is written under a temporary name and renamed when it is complete and\n",
        "checked: every chunk's crc32c, every stream's trailer and digest, no chunk missing;\n",
        "a sqlite: target must also have a whole SQLite header (and, with\n",
        "--integrity-check, pass PRAGMA integrity_check). A dir: target is extracted into\n",
        "a new directory beside it (no entry outside it, no symbolic link followed) and\n",
        "takes its place when whole; an existing target must be an empty directory, or\n",
        "any directory with --force. A postgres-data: target is such a directory, checked\n",
        "by pg_verifybackup before it is put in place. A cmd: target's program reads the\n",
        "restored bytes on its standard input; its exit status is the verdict. The restore\n",
        "may use another transfer size and block size than the backup; the device count is\n",
        "the backup's.\n\n",
        "Examples:\n",
        "  vdi restore backups/shop sqlite:shop-copy.db\n",
        "  vdi restore backups/disk file:disk.img --force --max-transfer-size 4M\n",
        "  vdi restore backups/pg postgres-data:/srv/pg/restored\n",
        "  vdi restore backups/www dir:/srv/www --force\n",
        "  vdi restore backups/dump 'cmd:pg_restore -d shop'\n",
        "  vdi restore - file:disk.img < disk.vdis"
    ))]
    Restore(RestoreArgs),
    /// Check a stored backup without restoring it: the manifest and its completion marker,
    /// every stream file, size, digest, chunk checksum and trailer.
    #[command(after_help = concat!(
        "Examples:\n",
        "  vdi verify backups/shop\n",
        "  vdi verify - < disk.vdis\n",
        "  vdi verify backups/shop --json"
    ))]
    Verify(VerifyArgs),
    /// The backup application (client role) alone, for an engine started by hand.
    #[command(subcommand, after_help = concat!(
        "Examples (two shells, or two users; the set name joins them):\n",
        "  vdi client backup --set nightly backups/shop --devices 2\n",
        "  vdi engine backup --set nightly sqlite:shop.db\n\n",
        "  vdi client restore --set nightly backups/shop\n",
        "  vdi engine restore --set nightly sqlite:shop-copy.db"
    ))]
    Client(ClientCmd),
    /// The reference engine (server role) alone, for a backup application started by hand.
    #[command(subcommand, after_help = concat!(
        "Examples (two shells, or two users; the set name joins them):\n",
        "  vdi client backup --set nightly backups/shop --devices 2\n",
        "  vdi engine backup --set nightly sqlite:shop.db\n\n",
        "  vdi client restore --set nightly backups/shop\n",
        "  vdi engine restore --set nightly sqlite:shop-copy.db"
    ))]
    Engine(EngineCmd),
    /// Make a sample SQLite database, back it up through 4 devices, restore it, check it.
    #[command(after_help = concat!(
        "Examples:\n",
        "  vdi demo\n",
        "  vdi demo --size 50M --keep --dir /tmp/vdi-demo"
    ))]
    Demo(DemoArgs),
    /// Back up, verify and restore in a loop with random sources, device counts, transfer
    /// sizes and compression, checking every byte (a soak test of both roles).
    #[command(after_help = concat!(
        "Each run draws its parameters from the seed plus its number: a file of random\n",
        "size (0, under a block, around block and chunk boundaries, up to --max-size) or,\n",
        "one run in eight, a SQLite database; 1 to 8 devices; transfer sizes 64K to 4M\n",
        "(another one for the restore, half the time); block sizes 512 to 64K; buffer\n",
        "counts; no compression or zstd levels 1 to 9. The first failure stops the soak\n",
        "and prints the command that repeats that run. Default: --duration 10m.\n\n",
        "Examples:\n",
        "  vdi soak --duration 10m\n",
        "  vdi soak --runs 200 --seed 42 --json\n",
        "  vdi soak --runs 1 --seed 1234567   # repeat one run"
    ))]
    Soak(SoakArgs),
    /// Show the virtual device sets live on this machine: who made them, their state,
    /// and per device the bytes moved, the commands outstanding and which side waits for
    /// the other (read-only: a set is never disturbed).
    #[command(after_help = concat!(
        "A set another user made shows only its name and owner, unless that user admits\n",
        "yours (vdi client --allow-group). WAIT shows, per device, the share of the set's\n",
        "time the backup application waited for the engine (CLIENT) and the engine for the\n",
        "backup application (ENGINE): the side that waits less is the bottleneck.\n\n",
        "Examples:\n",
        "  vdi sets\n",
        "  vdi sets --watch 2s\n",
        "  vdi sets --json"
    ))]
    Sets(SetsArgs),
    // -- repositories (issue 15) -------------------------------------------------------
    /// Make a repository: a directory that keeps many backups, each under a time-ordered
    /// id, with a catalog (vdi backup SOURCE REPO adds one; list, info, restore, expire).
    #[command(after_help = concat!(
        "A directory that is not a repository keeps one plain backup, as before: vdi backup\n",
        "SOURCE DIR writes its manifest and streams into DIR itself, and every command reads\n",
        "such a DIR as a one-backup repository.\n\n",
        "Examples:\n",
        "  vdi init /backups/shop\n",
        "  vdi backup sqlite:shop.db /backups/shop     # daily\n",
        "  vdi list /backups/shop\n",
        "  vdi restore /backups/shop:latest sqlite:shop-copy.db\n",
        "  vdi expire /backups/shop --keep-daily 7"
    ))]
    Init(InitArgs),
    /// List the backups of a repository: id, start, source, devices, sizes, compression,
    /// duration and state (complete, running, incomplete).
    #[command(after_help = concat!(
        "The catalog (REPO/catalog.json) is checked against the backups on every listing and\n",
        "rebuilt from their manifests if it is missing or wrong; a backup without a manifest is\n",
        "never listed as complete.\n\n",
        "Examples:\n",
        "  vdi list /backups/shop\n",
        "  vdi list /backups/shop --json"
    ))]
    List(ListArgs),
    /// Show a repository (REPO) or one backup in it (REPO:ID, REPO:latest or REPO/ID).
    #[command(after_help = concat!(
        "Examples:\n",
        "  vdi info /backups/shop\n",
        "  vdi info /backups/shop:latest\n",
        "  vdi info /backups/shop/20261207T171500Z-3fa9 --json"
    ))]
    Info(InfoArgs),
    /// Remove the backups of a repository that no rule keeps (and what interrupted
    /// backups left), printing each; a running backup is never touched.
    #[command(after_help = concat!(
        "A backup kept by any rule stays. --keep-last N: the newest N complete backups;\n",
        "--keep-daily N: the newest backup of each of the last N days (UTC) that have one;\n",
        "--keep-within D: every backup started within D of the newest one (7d, 36h).\n",
        "The newest complete backup is always kept unless --force. A removal takes the\n",
        "manifest first, then the stream files, so one cut short leaves an incomplete\n",
        "backup (removed by the next expire), never a complete-looking one.\n\n",
        "Examples:\n",
        "  vdi expire /backups/shop --keep-daily 7 --dry-run\n",
        "  vdi expire /backups/shop --keep-last 3 --keep-within 30d"
    ))]
    Expire(ExpireArgs),
    /// Print the shell completions of vdi for bash, zsh or fish.
    #[command(after_help = concat!(
        "Examples:\n",
        "  vdi completions bash > /etc/bash_completion.d/vdi\n",
        "  vdi completions zsh > \"${fpath[1]}/_vdi\"\n",
        "  vdi completions fish > ~/.config/fish/completions/vdi.fish"
    ))]
    Completions(CompletionsArgs),
    /// Print the manual page of vdi, or of one of its commands (roff).
    #[command(after_help = concat!(
        "Examples:\n",
        "  vdi man | man -l -\n",
        "  vdi man > /usr/local/share/man/man1/vdi.1\n",
        "  vdi man backup > /usr/local/share/man/man1/vdi-backup.1"
    ))]
    Man(ManArgs),
    /// Show the configuration in force: which file was read, the repository and where
    /// it came from, the store profile, and the defaults it sets.
    #[command(after_help = concat!(
        "The file is ~/.config/vdi/config.toml ($XDG_CONFIG_HOME/vdi/config.toml), or\n",
        "--config FILE, or VDI_CONFIG. What wins: the command line, then VDI_REPOSITORY and\n",
        "VDI_STORE_PROFILE, then the file, then vdi's defaults. Example file:\n\n",
        "  repository = \"/backups/shop\"\n",
        "  [store]\n",
        "  profile = \"backup\"\n",
        "  [backup]\n",
        "  devices = 4\n",
        "  compress = \"zstd:3\"\n",
        "  [expire]\n",
        "  keep_daily = 7"
    ))]
    Config(ConfigArgs),
    // -- the test engine for VDI client vendors (issue 16) ----------------------------
    /// Run T-SQL BACKUP and RESTORE statements against virtual device sets a VDI client
    /// created, as SQL Server would (the test engine; see docs/vendor-testing.md).
    #[command(after_help = concat!(
        "Statements: BACKUP DATABASE|LOG NAME TO VIRTUAL_DEVICE='SET'[, VIRTUAL_DEVICE='DEV'...]\n",
        "(up to 64), RESTORE DATABASE|LOG|HEADERONLY|FILELISTONLY|VERIFYONLY [NAME] FROM\n",
        "VIRTUAL_DEVICE=..., WITH options (BUFFERCOUNT, MAXTRANSFERSIZE, BLOCKSIZE, STATS,\n",
        "REPLACE, FORMAT, INIT, CHECKSUM, COMPRESSION, COPY_ONLY, NORECOVERY, ...; DIFFERENTIAL\n",
        "and STOPAT are refused); GO separates batches. Errors are printed as SQL Server's\n",
        "(Msg N, Level L, State 1, Line L). NAME is looked up in --database NAME=SOURCE,\n",
        "then VDI_DATABASES (NAME=SOURCE;NAME=SOURCE), then [databases] in the\n",
        "configuration file; a restore writes that SOURCE back (WITH REPLACE to overwrite).\n",
        "The same binary run as sqlcmd or osql (a link named so, or vdi sqlcmd ARGS) takes\n",
        "their options (-S -U -P -E -Q -q -i -b -d -h -W -s -t -V -o).\n\n",
        "Examples:\n",
        "  vdi sql --database shop=sqlite:shop.db \"BACKUP DATABASE shop TO VIRTUAL_DEVICE='set1'\"\n",
        "  vdi sql -i restore.sql --database shop=sqlite:shop-copy.db\n",
        "  ln -s \"$(command -v vdi)\" ~/bin/sqlcmd   # clients that run sqlcmd now run this"
    ))]
    Sql(SqlArgs),
    /// sqlcmd's command line (for clients that run `sqlcmd -S . -Q "BACKUP ..."`): the
    /// same as running this binary under the name sqlcmd.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sqlcmd(RawArgs),
    /// osql's command line (`osql -E -b -Q "BACKUP ..."`).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Osql(RawArgs),
    /// Run a battery of scenarios against a VDI client program and say, for each, what
    /// the engine saw, pass or fail, and which protocol rule the client broke.
    #[command(after_help = concat!(
        "The client is told what to do through its arguments and environment: {set}\n",
        "(VDI_SET) the set name to create, {op} backup or restore (VDI_OP), {OP} B or R,\n",
        "{file} its media file (VDI_FILE; device i > 0 may use FILE.i), {devices}\n",
        "(VDI_DEVICES), {db} the database name for its T-SQL (VDI_DB). sqlcmd and osql on\n",
        "its PATH are this program, so a client that runs sqlcmd -Q \"BACKUP DATABASE {db}\n",
        "TO VIRTUAL_DEVICE='{set}' ...\" gets the engine that way (--engine sqlcmd, the\n",
        "default unless ARGS hold {set}); with --engine direct, check-client serves the set\n",
        "itself (devices named SET, SET#1, ...). Scenarios: pipe-1, pipe-4, pipe-64,\n",
        "one-buffer, tape-2, disk-2, unknown-command, engine-pause, engine-fails-write,\n",
        "engine-killed, engine-aborts. C and C++ clients\n",
        "(through libsqlvdi or libvdi) also have every call they make checked.\n\n",
        "Examples:\n",
        "  vdi check-client -- ./vdipipesample-like {OP} D {db} {file} {devices}\n",
        "  vdi check-client --only pipe-1,engine-aborts --json -- ./myclient\n",
        "  vdi check-client -- vdi client {op} --set {set} /tmp/chk-{devices} --devices {devices} --force"
    ))]
    CheckClient(CheckClientArgs),
}

/// `vdi check-client`.
#[derive(Debug, Args)]
pub struct CheckClientArgs {
    /// The client program and its arguments (after --).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1.., value_name = "PROGRAM")]
    pub program: Vec<String>,
    /// Run only these scenarios (comma-separated names).
    #[arg(long, value_name = "NAMES")]
    pub only: Option<String>,
    /// How the client gets its engine: sqlcmd (it runs sqlcmd) or direct.
    #[arg(long, value_name = "HOW")]
    pub engine: Option<String>,
    /// Kill the client if a step takes longer (90s, 5m).
    #[arg(long, value_name = "TIME", default_value = "90s", value_parser = parse_duration)]
    pub client_timeout: Duration,
    /// How long a command may stay uncompleted before the engine gives up.
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// How much data each scenario backs up.
    #[arg(long, value_name = "BYTES", default_value = "3M", value_parser = parse_size_u64)]
    pub size: u64,
    /// Keep each scenario's directory (client output, trace, media) and say where.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_size_u64(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `vdi sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The statements to run (or -i FILE).
    #[arg(
        value_name = "STATEMENT",
        conflicts_with = "input",
        allow_hyphen_values = true
    )]
    pub statement: Option<String>,
    /// Read the statements from FILE (- for standard input).
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<std::path::PathBuf>,
    /// NAME=SOURCE: what BACKUP DATABASE NAME backs up and RESTORE DATABASE NAME restores
    /// into (any SOURCE vdi backup takes: sqlite:PATH, file:PATH, dir:PATH, ...).
    #[arg(long = "database", short = 'd', value_name = "NAME=SOURCE")]
    pub databases: Vec<String>,
    /// How long to wait for the client to create the set a statement names, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub wait: u64,
    /// Faults for the engine to inject (as vdi engine --inject).
    #[arg(long = "inject", value_name = "FAULT", value_parser = Fault::parse)]
    pub inject: Vec<Fault>,
    /// The device mode: pipe, tape, disk, or auto (as the client offers).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = vdi_backup::engine::DeviceMode::parse)]
    pub mode: vdi_backup::engine::DeviceMode,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments passed through as they are (sqlcmd's and osql's own syntax).
#[derive(Debug, Args)]
pub struct RawArgs {
    /// The arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

/// `vdi init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to make the repository in (new or empty; default: the configured
    /// repository).
    #[arg(value_name = "REPO")]
    pub repo: Option<String>,
    /// The modes of what the repository and its backups are made with (as vdi backup
    /// --mode).
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = Modes::parse)]
    pub mode: Modes,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The repository (default: the configured one).
    #[arg(value_name = "REPO")]
    pub repo: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// REPO, REPO:ID, REPO:latest, REPO/ID or a plain backup directory (default: the
    /// configured repository).
    #[arg(value_name = "REPO[/ID]")]
    pub what: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi expire`.
#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// The repository (default: the configured one).
    #[arg(value_name = "REPO")]
    pub repo: Option<String>,
    /// Keep the newest N complete backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days (UTC) that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep every backup started within this long of the newest one (7d, 36h, 90m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<Duration>,
    /// Print what would be removed; remove nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Also remove the newest complete backup if no rule keeps it.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// The shells completions are made for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// `vdi man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (default: vdi's own, which lists them all).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// `vdi config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Run for this long (90s, 10m, 2h; default 10m unless --runs is given).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Stop after this many runs (with --duration: whichever comes first).
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// The seed (default: a random one, printed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Largest source file.
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_size)]
    pub max_size: u64,
    /// Where to make the scratch directory (default: $TMPDIR); it is removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the files of a failed run (beside the scratch directory).
    #[arg(long)]
    pub keep_failed: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The roles' knobs for the engine (server role).
#[derive(Debug, Args, Clone)]
pub struct EngineKnobs {
    /// Total shared buffers the engine requests, 1 to 65536 (default: 4 per device, to
    /// keep every device busy). The buffers are allocated up front, so the engine asks for
    /// no more than the source can fill, nor more than 1 GiB in all, and says so.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub buffer_count: Option<u32>,
    /// Largest transfer (VDI maxTransferSize): a multiple of 64K up to 4M.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_transfer)]
    pub max_transfer_size: u32,
    /// VDI block size: every transfer is a multiple of it; a power of two from 512 to 64K.
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = parse_block)]
    pub block_size: u32,
    /// How the engine drives the devices: pipe (sequential), tape (Rewind, WriteMark,
    /// filemarks), disk (positioned Reads and Writes, a restore that reads out of order),
    /// or auto (as the backup application offers in its VDConfig.features).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = vdi_backup::engine::DeviceMode::parse)]
    pub device_mode: vdi_backup::engine::DeviceMode,
}

/// The progress watchdog.
#[derive(Debug, Args, Clone, Copy)]
pub struct StallArgs {
    /// Give up when the other role makes no progress for this long (a stopped engine or
    /// backup application, a producer that stopped writing): a warning comes first, then
    /// the operation is aborted, naming the side that stalled (exit 8). 90s, 5m, 1h, or
    /// seconds; 0: wait for ever.
    #[arg(long, value_name = "TIME", default_value = vdi_backup::watchdog::DEFAULT_STALL, value_parser = parse_duration)]
    pub stall_timeout: std::time::Duration,
}

impl StallArgs {
    /// The limit (None: wait for ever).
    pub fn limit(&self) -> Option<std::time::Duration> {
        (!self.stall_timeout.is_zero()).then_some(self.stall_timeout)
    }
}

/// Fault injection (for testing).
#[derive(Debug, Args, Clone, Default)]
pub struct InjectArgs {
    /// For testing: make the engine or the backup application fail, stall or abort at
    /// the Nth command (repeatable): ROLE:fail@N=CODE, ROLE:delay@N=DURATION, ROLE:abort@N.
    ///
    /// ROLE is engine (the server role) or client (the backup application); N counts the
    /// commands of the operation from 1, over every device (the engine counts those it
    /// sends, the backup application those it receives); CODE is a Win32 completion code,
    /// a number or a name (1117, ERROR_IO_DEVICE, 112, ERROR_DISK_FULL, 23, ERROR_CRC);
    /// DURATION is like 200ms or 2s. engine:fail makes the engine treat the command's
    /// completion as failed with CODE and give up; client:fail completes the command with
    /// CODE instead of doing it; abort calls SignalAbort; delay stalls first. A fault
    /// fails the operation (exit 6 for a disk-full code, else 8) and nothing is marked
    /// complete; a delay does not change the result. Example: --inject client:fail@7=112
    #[arg(long = "inject", value_name = "FAULT", value_parser = Fault::parse)]
    pub faults: Vec<Fault>,
}

/// Where the key of an encrypted backup comes from (never the command line itself).
#[derive(Debug, Args, Clone, Default)]
pub struct KeyArgs {
    /// The key of an encrypted backup: a file holding 32 random bytes (head -c 32
    /// /dev/urandom > KEY) or 64 hexadecimal digits (openssl rand -hex 32 > KEY). Keep
    /// it apart from the backups: without it they cannot be restored.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["passphrase_env", "passphrase_fd"])]
    pub key_file: Option<std::path::PathBuf>,
    /// The passphrase of an encrypted backup, from this environment variable (the key is
    /// derived from it with Argon2id; the manifest records the salt and parameters).
    #[arg(long, value_name = "VAR", conflicts_with = "passphrase_fd")]
    pub passphrase_env: Option<String>,
    /// The passphrase of an encrypted backup, read from this open file descriptor to
    /// its end (a final newline is dropped): --passphrase-fd 3 3<FILE.
    #[arg(long, value_name = "N")]
    pub passphrase_fd: Option<i32>,
}

impl KeyArgs {
    /// Refuses `--passphrase-fd 0` when standard input carries the data (`-`).
    pub fn refuse_stdin(&self, stdin_is_data: bool) -> vdi_backup::Result<()> {
        if stdin_is_data && self.passphrase_fd == Some(0) {
            return Err(vdi_backup::fail(
                vdi_backup::Kind::Usage,
                "--passphrase-fd 0 reads standard input, which carries the data here (-): give the passphrase on another descriptor (--passphrase-fd 3 3<FILE) or with --passphrase-env",
            ));
        }
        Ok(())
    }

    /// Whether a key or passphrase was named.
    pub fn given(&self) -> bool {
        self.key_file.is_some() || self.passphrase_env.is_some() || self.passphrase_fd.is_some()
    }

    /// The key or passphrase named, read (None if none was named).
    pub fn secret(&self) -> vdi_backup::Result<Option<std::sync::Arc<vdi_backup::seal::Secret>>> {
        use vdi_backup::seal::Secret;
        let usage = |e: String| vdi_backup::fail(vdi_backup::Kind::Usage, e);
        let s = if let Some(f) = &self.key_file {
            Secret::from_key_file(f).map_err(usage)?
        } else if let Some(v) = &self.passphrase_env {
            // Not for the engine, nor the programs it runs.
            crate::spawn::scrub_env(v);
            Secret::from_env(v).map_err(usage)?
        } else if let Some(fd) = self.passphrase_fd {
            Secret::from_fd(fd).map_err(usage)?
        } else {
            return Ok(None);
        };
        Ok(Some(std::sync::Arc::new(s)))
    }

    /// For a backup: the secret to encrypt with when `encrypt`, refusing a key without
    /// `--encrypt` and `--encrypt` without a key.
    pub fn for_backup(
        &self,
        encrypt: bool,
    ) -> vdi_backup::Result<Option<std::sync::Arc<vdi_backup::seal::Secret>>> {
        match (encrypt, self.given()) {
            (true, false) => Err(vdi_backup::fail(
                vdi_backup::Kind::Usage,
                "--encrypt needs a key: --key-file FILE, --passphrase-env VAR or --passphrase-fd N (never the key itself on the command line)",
            )),
            (false, true) => Err(vdi_backup::fail(
                vdi_backup::Kind::Usage,
                "a key or passphrase was given without --encrypt: add --encrypt to encrypt the backup with it",
            )),
            _ => self.secret(),
        }
    }
}

/// Output options.
#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Print one machine-readable JSON summary (on standard output, or on standard error
    /// when standard output carries the data).
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `vdi sets`.
#[derive(Debug, Args)]
pub struct SetsArgs {
    /// Show this set only.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Show again every TIME until interrupted (a terminal's screen is redrawn).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// What to back up: sqlite:PATH, file:PATH, dir:PATH, cmd:PROGRAM ARGS,
    /// postgres:CONNINFO or - (standard input).
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Where to store it: a repository (vdi init REPO; a new backup under a new id), a
    /// directory (one plain backup), or - (standard output, one device). Default: the
    /// configured repository.
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,
    /// Virtual devices to stripe the backup over (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub devices: u32,
    /// Compress each stored stream: none, lz4, zstd or zstd:LEVEL (1 to 22; -1 to -100
    /// are zstd's fast levels).
    #[arg(long, value_name = "ALGO", default_value = "none", value_parser = Compression::parse)]
    pub compress: Compression,
    /// Encrypt each stored stream (after compression) with AES-256-GCM, in
    /// authenticated chunks, with the key of --key-file, --passphrase-env or
    /// --passphrase-fd; restore and verify then need the same key.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The virtual device set's name (default: a new unique name).
    #[arg(long, value_name = "NAME", value_parser = parse_set_name)]
    pub set: Option<String>,
    /// Replace an existing backup in DEST: the new backup is written beside it and
    /// takes its place only once it is complete; then the old backup's files are removed
    /// (only those vdi wrote).
    #[arg(long)]
    pub force: bool,
    /// The modes of what the backup makes: files 0600 and directories 0700 by default
    /// (readable by their owner only); MODE is an octal file mode such as 640 (then
    /// directories get 0750: x wherever the mode gives r), or umask (files 0666 and
    /// directories 0777 less the umask, as other tools make them). A replaced backup's
    /// directory keeps the old one's permissions and owner.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = Modes::parse)]
    pub mode: Modes,
    #[command(flatten)]
    pub engine: EngineKnobs,
    #[command(flatten)]
    pub stall: StallArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup: a directory written by `vdi backup`, or - (a single stream on standard
    /// input).
    #[arg(value_name = "BACKUP")]
    pub backup: String,
    /// What to rebuild: sqlite:PATH, file:PATH, dir:PATH, postgres-data:DIR,
    /// cmd:PROGRAM ARGS or - (standard output).
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Devices (default: the backup's count; any other count is refused).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub devices: Option<u32>,
    /// The virtual device set's name (default: a new unique name).
    #[arg(long, value_name = "NAME", value_parser = parse_set_name)]
    pub set: Option<String>,
    /// Replace TARGET if it exists.
    #[arg(long)]
    pub force: bool,
    /// For a sqlite: TARGET, also run PRAGMA integrity_check before putting it in place
    /// (slow on large databases: every chunk is already checked against its crc32c).
    #[arg(long)]
    pub integrity_check: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub engine: EngineKnobs,
    #[command(flatten)]
    pub stall: StallArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The backup directory, or - (a single stream on standard input).
    #[arg(value_name = "BACKUP")]
    pub backup: String,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi client ...`.
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Create a set and store what an engine backs up through it.
    #[command(after_help = concat!(
        "Example: start the engine in another shell (or as another user) with the same --set:\n",
        "  vdi client backup --set nightly backups/shop --devices 2\n",
        "  vdi engine backup --set nightly sqlite:shop.db\n",
        "An engine running as another user (here: a member of group dbadmin):\n",
        "  vdi client backup --set nightly backups/shop --allow-group dbadmin\n",
        "  sudo -u postgres vdi engine backup --set nightly sqlite:shop.db --trust-owner backup"
    ))]
    Backup(ClientBackupArgs),
    /// Create a set and serve a stored backup to an engine that restores it.
    #[command(after_help = concat!(
        "Example: start the engine in another shell (or as another user) with the same --set:\n",
        "  vdi client restore --set nightly backups/shop\n",
        "  vdi engine restore --set nightly sqlite:shop-copy.db"
    ))]
    Restore(ClientRestoreArgs),
}

/// `vdi client backup`.
#[derive(Debug, Args)]
pub struct ClientBackupArgs {
    /// The set name the engine will open.
    #[arg(long, value_name = "NAME", value_parser = parse_set_name)]
    pub set: String,
    /// Where to store the backup: a directory, or - (standard output, one device).
    #[arg(value_name = "DEST")]
    pub dest: String,
    /// Virtual devices (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub devices: u32,
    /// Compress each stored stream: none, lz4, zstd or zstd:LEVEL (1 to 22; -1 to -100
    /// are zstd's fast levels).
    #[arg(long, value_name = "ALGO", default_value = "none", value_parser = Compression::parse)]
    pub compress: Compression,
    /// Encrypt each stored stream (after compression) with AES-256-GCM, with the key of
    /// --key-file, --passphrase-env or --passphrase-fd.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Replace an existing backup in DEST (written beside it, swapped in once complete).
    #[arg(long)]
    pub force: bool,
    /// The modes of what the backup makes: files 0600 and directories 0700 by default
    /// (readable by their owner only); MODE is an octal file mode such as 640 (then
    /// directories get 0750: x wherever the mode gives r), or umask (files 0666 and
    /// directories 0777 less the umask, as other tools make them). A replaced backup's
    /// directory keeps the old one's permissions and owner.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = Modes::parse)]
    pub mode: Modes,
    /// Seconds to wait for an engine to configure the set (0: forever).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    /// Also admit an engine running as a member of this group (name or gid); by default
    /// only this user's processes may open the set.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub allow_group: Option<u32>,
    #[command(flatten)]
    pub stall: StallArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi client restore`.
#[derive(Debug, Args)]
pub struct ClientRestoreArgs {
    /// The set name the engine will open.
    #[arg(long, value_name = "NAME", value_parser = parse_set_name)]
    pub set: String,
    /// The backup directory, or - (a single stream on standard input).
    #[arg(value_name = "BACKUP")]
    pub backup: String,
    /// Devices (default: the backup's count; any other count is refused).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub devices: Option<u32>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Seconds to wait for an engine to configure the set (0: forever).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    /// Also admit an engine running as a member of this group (name or gid); by default
    /// only this user's processes may open the set.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub allow_group: Option<u32>,
    #[command(flatten)]
    pub stall: StallArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi engine ...`.
#[derive(Debug, Subcommand)]
pub enum EngineCmd {
    /// Open a set and back SOURCE up through its devices.
    #[command(after_help = concat!(
        "Example: the backup application must have created the set (vdi client backup --set NAME):\n",
        "  vdi engine backup --set nightly sqlite:shop.db\n",
        "  vdi engine backup --set nightly file:disk.img --max-transfer-size 4M"
    ))]
    Backup(EngineBackupArgs),
    /// Open a set and restore TARGET from what its devices serve.
    #[command(after_help = concat!(
        "Example: the backup application must have created the set (vdi client restore --set NAME):\n",
        "  vdi engine restore --set nightly sqlite:shop-copy.db\n",
        "  vdi engine restore --set nightly file:disk.img --force"
    ))]
    Restore(EngineRestoreArgs),
}

/// What both engine commands share: which set, how long to wait for it, whom to trust,
/// the faults to inject, and how `vdi backup`/`vdi restore` drive an engine they start.
#[derive(Debug, Args)]
pub struct EngineSession {
    /// The set the backup application created.
    #[arg(long, value_name = "NAME", value_parser = parse_set_name)]
    pub set: String,
    /// Seconds to wait for the set to appear.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
    /// Also accept a set created by this user (name or uid); by default only sets of this
    /// user or root are opened, so nobody can pose as the backup application.
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    pub trust_owner: Option<u32>,
    #[command(flatten)]
    pub stall: StallArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
    /// Print the outcome as a report line on standard error (for `vdi backup`/`vdi
    /// restore`, which started this engine).
    #[arg(long, hide = true)]
    pub report: bool,
    /// The pid of the `vdi backup`/`vdi restore` that started this engine: the engine
    /// gives up at once when that process is gone.
    #[arg(long, value_name = "PID", hide = true)]
    pub parent_pid: Option<u32>,
}

/// `vdi engine backup`.
#[derive(Debug, Args)]
pub struct EngineBackupArgs {
    /// What to back up: sqlite:PATH, file:PATH, dir:PATH, cmd:PROGRAM ARGS,
    /// postgres:CONNINFO or - (standard input).
    #[arg(value_name = "SOURCE")]
    pub source: String,
    #[command(flatten)]
    pub session: EngineSession,
    #[command(flatten)]
    pub engine: EngineKnobs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi engine restore`.
#[derive(Debug, Args)]
pub struct EngineRestoreArgs {
    /// What to rebuild: sqlite:PATH, file:PATH, dir:PATH, postgres-data:DIR,
    /// cmd:PROGRAM ARGS or - (standard output).
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Replace TARGET if it exists.
    #[arg(long)]
    pub force: bool,
    /// For a sqlite: TARGET, also run PRAGMA integrity_check before putting it in place.
    #[arg(long)]
    pub integrity_check: bool,
    #[command(flatten)]
    pub session: EngineSession,
    #[command(flatten)]
    pub engine: EngineKnobs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vdi demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Approximate size of the sample database (also: the VDI_DEMO_SIZE variable).
    #[arg(long, value_name = "BYTES", default_value = "300M", env = "VDI_DEMO_SIZE", value_parser = parse_size)]
    pub size: u64,
    /// Devices to stripe over.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub devices: u32,
    /// Where to work (default: a new temporary directory, removed at the end unless
    /// --keep).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the sample database, the backup and the restored copy.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A numeric id, or a name looked up in `file` (`/etc/passwd` or `/etc/group`).
fn lookup_id(s: &str, file: &str, what: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse::<u32>().ok()?;
            (name == s).then_some(id)
        })
        .next()
        .ok_or_else(|| format!("no {what} named '{s}' in {file}"))
}

fn parse_group(s: &str) -> Result<u32, String> {
    lookup_id(s, "/etc/group", "group")
}

fn parse_user(s: &str) -> Result<u32, String> {
    lookup_id(s, "/etc/passwd", "user")
}

/// A set name, as the library accepts it (`vdi::validate_set_name`: 1 to 100 ASCII
/// letters, digits and `-_.{}`; it names an abstract socket that every process on the
/// machine can see, and appears in logs).
pub fn parse_set_name(s: &str) -> Result<String, String> {
    vdi::validate_set_name(s).map_err(|e| {
        format!(
            "{}; for example nightly-shop, or a GUID in braces",
            e.reason()
        )
    })?;
    Ok(s.to_owned())
}

/// Parses `10m`, `90s`, `2h`, `1h30m` or a number of seconds (a command-line value).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    vdi_backup::units::parse_duration(s, Duration::from_secs(1))
}

fn parse_transfer(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n == 0 || !n.is_multiple_of(65536) || n > 4 << 20 {
        return Err(format!(
            "{n} bytes: the max transfer size must be a multiple of 64K from 64K to 4M"
        ));
    }
    Ok(n as u32)
}

fn parse_block(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || !(512..=65536).contains(&n) {
        return Err(format!(
            "{n} bytes: the block size must be a power of two from 512 to 64K"
        ));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn knob_parsers() {
        assert_eq!(parse_transfer("1M"), Ok(1 << 20));
        assert!(parse_transfer("1000").is_err());
        assert!(parse_transfer("8M").is_err());
        assert_eq!(parse_block("64K"), Ok(65536));
        assert!(parse_block("1000").is_err());
        assert!(parse_block("128K").is_err());
        assert_eq!(parse_user("root"), Ok(0));
        assert_eq!(parse_user("1234"), Ok(1234));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(parse_group("no-such-group-here").is_err());
        assert!(parse_set_name("nightly-shop_1.{0f}").is_ok());
        for bad in [
            "",
            "a b",
            "a\nb",
            "a\tb",
            "a/b",
            "é",
            "a#1",
            &"x".repeat(101),
        ] {
            assert!(parse_set_name(bad).is_err(), "{bad:?}");
        }
        // vdi's own names follow the rule.
        assert!(parse_set_name(&vdi_backup::util::new_set_name("backup")).is_ok());
        assert!(parse_set_name(&vdi_backup::util::new_set_name("restore")).is_ok());
    }
}
