//! `cargo xtask services up|status`: bring every service the tests need up.
//!
//! Written for a Debian 12 machine without Docker or systemd, where apt never starts
//! what it installs. `up` installs what is missing, starts what is stopped (the slow
//! ones in parallel) and waits until each accepts TCP connections; when everything
//! already runs it only probes the ports (well under a second).
//!
//! | service | address | install | start |
//! |---|---|---|---|
//! | PostgreSQL, trust auth, database `test` | 127.0.0.1:5432 | apt `postgresql` | `pg_ctlcluster` |
//! | MariaDB, root with empty password, database `test` | 127.0.0.1:3306 | apt `mariadb-server` | `mariadbd` |
//! | RabbitMQ, guest/guest | 127.0.0.1:5672 | apt `rabbitmq-server` | `rabbitmq-server -detached` |
//! | Kafka protocol: tansu 0.6, in-memory storage | 127.0.0.1:9092 | `cargo install tansu` | `tansu broker` |
//! | EventBridge + SQS: moto 5 | 127.0.0.1:4566 | pip, in a virtualenv of ours | `moto_server` |
//!
//! Output of what xtask starts goes to `${XDG_STATE_HOME:-$HOME/.local/state}/outbox/`;
//! the moto virtualenv lives in `${XDG_DATA_HOME:-$HOME/.local/share}/outbox/moto-venv`.

use crate::cmd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

/// Dispatches `services <sub>`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("status") => status(),
        _ => Err("usage: cargo xtask services up|status".to_string()),
    }
}

/// Debian packages the workspace needs to *build* (C client libraries of -sys crates).
/// libpq-dev: diesel's sync PostgreSQL connection; libmariadb-dev: diesel's sync MySQL connection.
const BUILD_PACKAGES: &[&str] = &["pkg-config", "libpq-dev", "libmariadb-dev"];

/// Installs the build prerequisites that are missing (a no-op when all are there).
fn build_deps() -> Result<(), String> {
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let installed = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
                .unwrap_or(false);
            !installed
        })
        .collect();
    if missing.is_empty() { Ok(()) } else { apt_install(&missing) }
}

/// Installs what is missing (build prerequisites included) and starts what is stopped; does
/// nothing when all run.
pub(crate) fn up() -> Result<(), String> {
    let begin = Instant::now();
    build_deps()?;
    let paths = Paths::new();
    let mut errors = Vec::new();
    let mut down = Vec::new();
    for service in ALL {
        if cmd::port_open(service.port()) {
            match service.check_running() {
                Ok(()) => println!("{}  already running", service.label()),
                Err(error) => errors.push(error),
            }
        } else {
            down.push(service);
        }
    }
    if !down.is_empty() {
        let mut packages: Vec<&str> = Vec::new();
        for service in &down {
            for package in service.missing_packages(&paths) {
                if !packages.contains(&package) {
                    packages.push(package);
                }
            }
        }
        if !packages.is_empty()
            && let Err(error) = apt_install(&packages)
        {
            // Go on: what is installed can still start; the rest reports what is missing.
            errors.push(error);
        }
        let starting: Vec<_> = down
            .iter()
            .map(|&service| {
                let paths = paths.clone();
                (service, thread::spawn(move || service.start(&paths)))
            })
            .collect();
        for (service, handle) in starting {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => errors.push(error),
                Err(_) => errors.push(format!("{}: the thread starting it panicked", service.name())),
            }
        }
    }
    let took = begin.elapsed().as_secs_f64();
    if errors.is_empty() {
        println!("services: all {} up ({took:.2} s)", ALL.len());
        Ok(())
    } else {
        Err(format!(
            "services up failed after {took:.1} s (logs in {}):\n  - {}",
            paths.logs.display(),
            errors.join("\n  - ")
        ))
    }
}

/// Prints one line per service: name, address, and whether it runs.
fn status() -> Result<(), String> {
    let paths = Paths::new();
    for service in ALL {
        let state = if cmd::port_open(service.port()) {
            "running"
        } else if service.installed(&paths) {
            "not running (installed)"
        } else {
            "not running (not installed)"
        };
        println!("{}  {state}", service.label());
    }
    println!("logs: {}", paths.logs.display());
    Ok(())
}

/// Every service, in the order they are reported.
const ALL: [Service; 5] = [Service::Postgres, Service::Mariadb, Service::Rabbitmq, Service::Tansu, Service::Moto];

/// One of the servers the tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// PostgreSQL, trust auth, database `test`.
    Postgres,
    /// MariaDB, root with an empty password over TCP, database `test`.
    Mariadb,
    /// RabbitMQ, guest/guest.
    Rabbitmq,
    /// tansu, a Kafka-protocol broker, in-memory storage.
    Tansu,
    /// moto server: EventBridge and SQS.
    Moto,
}

impl Service {
    /// Short name used in messages and log file names.
    fn name(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Mariadb => "mariadb",
            Service::Rabbitmq => "rabbitmq",
            Service::Tansu => "tansu",
            Service::Moto => "moto",
        }
    }

    /// The TCP port on 127.0.0.1.
    fn port(self) -> u16 {
        match self {
            Service::Postgres => 5432,
            Service::Mariadb => 3306,
            Service::Rabbitmq => 5672,
            Service::Tansu => 9092,
            Service::Moto => 4566,
        }
    }

    /// How long it may take from start to accepting connections.
    fn ready_timeout(self) -> Duration {
        Duration::from_secs(match self {
            Service::Postgres | Service::Mariadb => 30,
            Service::Rabbitmq => 60,
            Service::Tansu | Service::Moto => 20,
        })
    }

    /// `name  address`, padded into columns.
    fn label(self) -> String {
        format!("{:<9} 127.0.0.1:{:<5}", self.name(), self.port())
    }

    /// Whether its server program is on this machine.
    fn installed(self, paths: &Paths) -> bool {
        match self {
            Service::Postgres => postgres_version().is_ok() && cmd::which("pg_ctlcluster").is_some(),
            Service::Mariadb => mariadbd().is_some(),
            Service::Rabbitmq => cmd::is_executable(Path::new(RABBITMQ_SERVER)),
            Service::Tansu => tansu_binary().is_some(),
            Service::Moto => cmd::is_executable(&paths.moto_server()),
        }
    }

    /// Debian packages to install before it can start (none when already there).
    fn missing_packages(self, paths: &Paths) -> Vec<&'static str> {
        if self.installed(paths) {
            return Vec::new();
        }
        match self {
            Service::Postgres => vec!["postgresql"],
            Service::Mariadb => vec!["mariadb-server"],
            Service::Rabbitmq => vec!["rabbitmq-server"],
            Service::Tansu => Vec::new(),
            Service::Moto => match python() {
                None => vec!["python3", "python3-venv"],
                Some(python) if !can_make_venv(&python) => vec!["python3-venv"],
                Some(_) => Vec::new(),
            },
        }
    }

    /// For a service whose port is open: makes sure the tests can log in (cheap).
    fn check_running(self) -> Result<(), String> {
        match self {
            Service::Postgres => ensure_postgres_access(),
            Service::Mariadb => ensure_mariadb_access(),
            Service::Rabbitmq | Service::Tansu | Service::Moto => Ok(()),
        }
    }

    /// Installs what apt does not, starts the server and waits until it is ready.
    fn start(self, paths: &Paths) -> Result<(), String> {
        match self {
            Service::Postgres => start_postgres(paths),
            Service::Mariadb => start_mariadb(paths),
            Service::Rabbitmq => start_rabbitmq(paths),
            Service::Tansu => start_tansu(paths),
            Service::Moto => start_moto(paths),
        }
    }

    /// Polls the port until it accepts connections. `child` is the server process when
    /// xtask spawned it (an early exit is then reported at once); `logs` are named in
    /// the error with the tail of the first; `by_hand` is the command to try manually.
    fn wait_ready(self, mut child: Option<Child>, logs: &[PathBuf], by_hand: &str) -> Result<(), String> {
        let begin = Instant::now();
        let timeout = self.ready_timeout();
        let shown_logs = logs.iter().map(|log| log.display().to_string()).collect::<Vec<_>>().join(" and ");
        loop {
            if cmd::port_open(self.port()) {
                println!("{}  started, ready in {:.2} s", self.label(), begin.elapsed().as_secs_f64());
                return Ok(());
            }
            if let Some(process) = child.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                return Err(format!(
                    "{} exited with {status} right after starting; see {shown_logs}{}\n    start it by hand with: {by_hand}",
                    self.name(),
                    tail(logs)
                ));
            }
            if begin.elapsed() >= timeout {
                return Err(format!(
                    "{} did not accept connections on 127.0.0.1:{} within {} s; see {shown_logs}{}\n    start it by hand with: {by_hand}",
                    self.name(),
                    self.port(),
                    timeout.as_secs(),
                    tail(logs)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last lines of the first of `logs` (the latest run's), for an error message.
fn tail(logs: &[PathBuf]) -> String {
    logs.first().map(|log| cmd::tail(log, 20)).unwrap_or_default()
}

/// Where xtask keeps logs and the things it installs for itself.
#[derive(Clone, Debug)]
struct Paths {
    /// `${XDG_STATE_HOME:-$HOME/.local/state}/outbox`: logs.
    logs: PathBuf,
    /// `${XDG_DATA_HOME:-$HOME/.local/share}/outbox`: the moto virtualenv.
    data: PathBuf,
}

impl Paths {
    /// Resolves the XDG folders (falling back to the temp folder without `$HOME`).
    fn new() -> Self {
        let home = home();
        let base = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(default))
        };
        Paths {
            logs: base("XDG_STATE_HOME", ".local/state").join("outbox"),
            data: base("XDG_DATA_HOME", ".local/share").join("outbox"),
        }
    }

    /// The log file of one thing xtask runs.
    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The virtualenv moto is installed into.
    fn moto_venv(&self) -> PathBuf {
        self.data.join("moto-venv")
    }

    /// The `moto_server` program inside that virtualenv.
    fn moto_server(&self) -> PathBuf {
        self.moto_venv().join("bin/moto_server")
    }
}

/// `$HOME`, or the temp folder when it is not set.
fn home() -> PathBuf {
    std::env::var_os("HOME").filter(|value| !value.is_empty()).map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// `apt-get update` then `apt-get install` of `packages`, non-interactive.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    println!("services: installing {} with apt-get", packages.join(" "));
    let apt = |args: &[&str]| {
        let mut command = cmd::privileged("env");
        command.args(["DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=300"]).args(args);
        command
    };
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    let by_hand = cmd::shell_line(&install);
    cmd::status(&mut apt(&["update"])).and_then(|()| cmd::status(&mut install)).map_err(|error| {
        format!("installing {} failed: {error}\n    run by hand: apt-get update && {by_hand}", packages.join(" "))
    })
}

/// Writes (or appends to) a file owned by root, through `sudo tee` when not root.
fn write_system_file(path: &Path, contents: &str, append: bool) -> Result<(), String> {
    use std::io::Write;
    if cmd::is_root() {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        return file.write_all(contents.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()));
    }
    let mut tee = Command::new("sudo");
    tee.arg("tee");
    if append {
        tee.arg("-a");
    }
    tee.arg(path).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = tee.spawn().map_err(|e| format!("could not start `sudo tee {}`: {e}", path.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(contents.as_bytes())
            .map_err(|e| format!("writing {} through sudo tee: {e}", path.display()))?;
    }
    match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`sudo tee {}` failed with {status}", path.display())),
        Err(e) => Err(format!("waiting for `sudo tee {}`: {e}", path.display())),
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// `pg_hba.conf` written on a fresh install: trust every local connection (test machine).
const PG_HBA: &str = "\
# Written by `cargo xtask services up` (the original is next to it, *.before-xtask):
# trust every local connection; this is a test machine.
local   all           all                 trust
host    all           all   127.0.0.1/32  trust
host    all           all   ::1/128       trust
local   replication   all                 trust
host    replication   all   127.0.0.1/32  trust
host    replication   all   ::1/128       trust
";

/// The newest PostgreSQL major version with a cluster configured, else installed.
fn postgres_version() -> Result<String, String> {
    let newest = |dir: &str, marker: &str| -> Option<String> {
        let mut versions: Vec<(u32, String)> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let major = name.split('.').next()?.parse().ok()?;
                entry.path().join(marker).exists().then_some((major, name))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, name)| name)
    };
    newest("/etc/postgresql", "main/postgresql.conf")
        .or_else(|| newest("/usr/lib/postgresql", "bin/postgres"))
        .ok_or_else(|| {
            "no PostgreSQL server in /usr/lib/postgresql; install it with \
             `apt-get install -y --no-install-recommends postgresql`"
                .to_string()
        })
}

/// `pg_ctlcluster --skip-systemctl-redirect <version> main <action>`.
fn pg_ctlcluster(version: &str, action: &str) -> Command {
    let mut command = cmd::privileged("pg_ctlcluster");
    command.args(["--skip-systemctl-redirect", version, "main", action]);
    command
}

/// Starts the main cluster (creating it if the install left none) and sets up access.
fn start_postgres(paths: &Paths) -> Result<(), String> {
    let log = paths.log("postgres");
    let version = postgres_version()?;
    if !Path::new(&format!("/etc/postgresql/{version}/main")).is_dir() {
        let mut create = cmd::privileged("pg_createcluster");
        create.args([version.as_str(), "main"]);
        cmd::run_logged(&mut create, &log)?;
    }
    let mut start = pg_ctlcluster(&version, "start");
    let by_hand = cmd::shell_line(&start);
    let server_log = PathBuf::from(format!("/var/log/postgresql/postgresql-{version}-main.log"));
    let started = cmd::run_logged(&mut start, &log);
    // `pg_ctlcluster` waits for the server itself; it also fails when the cluster already
    // runs, so its error only counts if the port stays closed.
    Service::Postgres.wait_ready(None, &[log, server_log], &by_hand).map_err(|error| match started {
        Ok(()) => error,
        Err(start_error) => format!("postgres: {start_error}"),
    })?;
    ensure_postgres_access()
}

/// `psql` as `postgres` over TCP, without a password prompt, printing bare values.
fn psql(database: &str, sql: &str) -> Command {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-w", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", "5432"])
        .args(["-U", "postgres", "-d", database, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGPASSWORD");
    command
}

/// Makes sure `postgres` can log in over TCP without a password and database `test`
/// exists: one query when it does, else trust auth in `pg_hba.conf` and `CREATE DATABASE`.
fn ensure_postgres_access() -> Result<(), String> {
    if cmd::which("psql").is_none() || cmd::output(&mut psql("test", "SELECT 1")).is_ok() {
        return Ok(());
    }
    if cmd::output(&mut psql("postgres", "SELECT 1")).is_err() {
        trust_local_connections()?;
    }
    let exists = cmd::output(&mut psql("postgres", "SELECT 1 FROM pg_database WHERE datname = 'test'"))
        .map_err(|e| format!("postgres: checking for database test: {e}"))?;
    if exists.trim() != "1" {
        cmd::output(&mut psql("postgres", "CREATE DATABASE test"))
            .map_err(|e| format!("postgres: creating database test: {e}"))?;
        println!("{}  created database test", Service::Postgres.label());
    }
    cmd::output(&mut psql("test", "SELECT 1"))
        .map(|_| ())
        .map_err(|e| format!("postgres runs but database test is not usable: {e}"))
}

/// Replaces `pg_hba.conf` by [`PG_HBA`] (keeping the original), reloads, waits for it.
fn trust_local_connections() -> Result<(), String> {
    let version = postgres_version()?;
    let hba = PathBuf::from(format!("/etc/postgresql/{version}/main/pg_hba.conf"));
    let backup = hba.with_extension("conf.before-xtask");
    let cannot = |what: String| {
        format!(
            "postgres refuses password-less logins over TCP and {what}; set `trust` for \
             local, 127.0.0.1/32 and ::1/128 in {} and run `pg_ctlcluster {version} main reload`",
            hba.display()
        )
    };
    if !backup.exists() {
        let mut copy = cmd::privileged("cp");
        copy.arg("-p").arg(&hba).arg(&backup);
        cmd::output(&mut copy).map_err(|e| cannot(format!("backing up pg_hba.conf failed: {e}")))?;
    }
    write_system_file(&hba, PG_HBA, false).map_err(cannot)?;
    cmd::output(&mut pg_ctlcluster(&version, "reload")).map_err(|e| cannot(format!("reloading failed: {e}")))?;
    println!(
        "{}  set trust auth in {} (original kept as {})",
        Service::Postgres.label(),
        hba.display(),
        backup.display()
    );
    let begin = Instant::now();
    loop {
        match cmd::output(&mut psql("postgres", "SELECT 1")) {
            Ok(_) => return Ok(()),
            Err(e) if begin.elapsed() > Duration::from_secs(5) => {
                return Err(cannot(format!("still does after a reload: {e}")));
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------- MariaDB

/// The MariaDB server program, if installed.
fn mariadbd() -> Option<PathBuf> {
    ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"].into_iter().map(PathBuf::from).find(|path| cmd::is_executable(path))
}

/// Starts `mariadbd` (as user mysql, in its own session) and sets up access.
fn start_mariadb(paths: &Paths) -> Result<(), String> {
    let log = paths.log("mariadb");
    let server = mariadbd().ok_or_else(|| {
        "mariadb: /usr/sbin/mariadbd is missing; install it with \
         `apt-get install -y --no-install-recommends mariadb-server`"
            .to_string()
    })?;
    if !Path::new("/run/mysqld").is_dir() {
        let mut run_dir = cmd::privileged("install");
        run_dir.args(["-d", "-m", "755", "-o", "mysql", "-g", "root", "/run/mysqld"]);
        cmd::run_logged(&mut run_dir, &log)?;
    }
    let not_found = |path: &str| std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if not_found("/var/lib/mysql/mysql") {
        let mut init = cmd::privileged("mariadb-install-db");
        init.args(["--user=mysql", "--datadir=/var/lib/mysql"]);
        cmd::run_logged(&mut init, &log)?;
    }
    let mut command = cmd::privileged(&server.to_string_lossy());
    command.arg("--user=mysql");
    let by_hand = format!("setsid -f {} >> {} 2>&1", cmd::shell_line(&command), log.display());
    let child = cmd::spawn_detached(&command, &log)?;
    Service::Mariadb.wait_ready(Some(child), &[log, PathBuf::from("/var/log/mysql/error.log")], &by_hand)?;
    ensure_mariadb_access()
}

/// The MariaDB command-line client, if installed.
fn mariadb_client() -> Option<PathBuf> {
    cmd::which("mariadb").or_else(|| cmd::which("mysql"))
}

/// SQL run over the unix socket (as root) when root cannot log in over TCP.
const MARIADB_SETUP: &str = "\
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; \
ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY ''; \
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; \
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); \
CREATE DATABASE IF NOT EXISTS test; \
FLUSH PRIVILEGES;";

/// Makes sure root logs in over TCP with an empty password and database `test` exists:
/// one query when it does, else [`MARIADB_SETUP`] through the unix socket.
fn ensure_mariadb_access() -> Result<(), String> {
    let Some(client) = mariadb_client() else {
        return Ok(());
    };
    let tcp = || {
        let mut command = Command::new(&client);
        command
            .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", "3306"])
            .args(["-u", "root", "--password=", "--connect-timeout=5", "-N", "-s"])
            .args(["-e", "SELECT 1", "test"]);
        command
    };
    if cmd::output(&mut tcp()).is_ok() {
        return Ok(());
    }
    let mut setup = cmd::privileged(&client.to_string_lossy());
    setup.args(["--protocol=SOCKET", "-u", "root", "-e", MARIADB_SETUP]);
    let by_hand = cmd::shell_line(&setup);
    cmd::output(&mut setup).map_err(|e| {
        format!(
            "mariadb: root cannot log in over TCP with an empty password, and fixing it \
             over the unix socket failed: {e}\n    fix by hand: {by_hand}"
        )
    })?;
    println!(
        "{}  set root@127.0.0.1 and root@localhost to an empty password, created database test",
        Service::Mariadb.label()
    );
    cmd::output(&mut tcp()).map(|_| ()).map_err(|e| format!("mariadb: still no TCP login as root after the setup: {e}"))
}

// ---------------------------------------------------------------- RabbitMQ

/// The RabbitMQ start script installed by Debian.
const RABBITMQ_SERVER: &str = "/usr/sbin/rabbitmq-server";

/// Starts RabbitMQ detached (its node name needs the host name to resolve).
fn start_rabbitmq(paths: &Paths) -> Result<(), String> {
    let log = paths.log("rabbitmq");
    ensure_hostname_resolves()?;
    let mut start = cmd::privileged(RABBITMQ_SERVER);
    start.arg("-detached");
    let by_hand = cmd::shell_line(&start);
    let started = cmd::run_logged(&mut start, &log);
    Service::Rabbitmq.wait_ready(None, &[log, PathBuf::from("/var/log/rabbitmq/")], &by_hand).map_err(|error| {
        match started {
            Ok(()) => format!(
                "{error}\n    (if `rabbitmq-diagnostics -q ping` answers, the node runs without \
                 its AMQP listener: try `rabbitmqctl start_app`)"
            ),
            Err(start_error) => format!("rabbitmq: {start_error}"),
        }
    })
}

/// Adds `127.0.0.1 <host>` to /etc/hosts unless the short host name resolves.
fn ensure_hostname_resolves() -> Result<(), String> {
    let full = match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) => name.trim().to_string(),
        Err(_) => cmd::output(&mut Command::new("hostname"))?.trim().to_string(),
    };
    let short = full.split('.').next().unwrap_or(&full).to_string();
    if short.is_empty() {
        return Err("rabbitmq: this machine has no host name; set one with `hostname`".into());
    }
    if cmd::output(Command::new("getent").args(["hosts", &short])).is_ok() {
        return Ok(());
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let separator = if hosts.is_empty() || hosts.ends_with('\n') { "" } else { "\n" };
    let names = if full == short { short.clone() } else { format!("{short} {full}") };
    let line = format!("{separator}127.0.0.1 {names}\n");
    write_system_file(Path::new("/etc/hosts"), &line, true).map_err(|e| {
        format!(
            "rabbitmq: its node name rabbit@{short} needs `{short}` to resolve, and adding it \
             to /etc/hosts failed: {e}; add `127.0.0.1 {short}` to /etc/hosts by hand"
        )
    })?;
    println!("{}  added `127.0.0.1 {names}` to /etc/hosts (the node name needs it)", Service::Rabbitmq.label());
    Ok(())
}

// ---------------------------------------------------------------- tansu

/// The command that installs tansu (with a storage engine: the default features have none).
const TANSU_INSTALL: [&str; 8] =
    ["install", "tansu", "--version", "~0.6", "--locked", "--no-default-features", "--features", "dynostore"];

/// `tansu` on `PATH`, else in `$CARGO_HOME/bin` (default `~/.cargo/bin`).
fn tansu_binary() -> Option<PathBuf> {
    cmd::which("tansu").or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".cargo"));
        Some(cargo_home.join("bin/tansu")).filter(|path| cmd::is_executable(path))
    })
}

/// Whether some `cargo install … tansu …` runs on this machine right now.
fn tansu_install_running() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw.split(|byte| *byte == 0).collect();
        args.first().is_some_and(|program| program.ends_with(b"cargo"))
            && args.contains(&b"install".as_slice())
            && args.contains(&b"tansu".as_slice())
    })
}

/// Returns the tansu binary, building it with `cargo install` first if needed (or
/// waiting for an install that already runs, rather than starting a second one).
fn install_tansu(paths: &Paths) -> Result<PathBuf, String> {
    if let Some(binary) = tansu_binary() {
        return Ok(binary);
    }
    if tansu_install_running() {
        println!("{}  waiting for the `cargo install tansu` already running", Service::Tansu.label());
        let begin = Instant::now();
        while tansu_install_running() && begin.elapsed() < Duration::from_secs(45 * 60) {
            thread::sleep(Duration::from_secs(2));
        }
        if let Some(binary) = tansu_binary() {
            return Ok(binary);
        }
    }
    let log = paths.log("tansu-install");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut install = Command::new(cargo);
    install
        .args(TANSU_INSTALL)
        // Out of the workspace (its config does not apply) and into cargo's own temporary
        // target folder (not the one of the running `cargo xtask`).
        .current_dir(home())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    println!(
        "{}  not installed: building it (about 10 minutes on 2 cores), log {}",
        Service::Tansu.label(),
        log.display()
    );
    let begin = Instant::now();
    let by_hand = cmd::shell_line(Command::new("cargo").args(TANSU_INSTALL));
    cmd::run_logged(&mut install, &log)
        .map_err(|e| format!("tansu: installing failed: {e}\n    run by hand: {by_hand}"))?;
    println!("{}  installed in {:.0} s", Service::Tansu.label(), begin.elapsed().as_secs_f64());
    tansu_binary().ok_or_else(|| {
        "tansu: `cargo install` succeeded but there is no `tansu` on PATH or in \
         $CARGO_HOME/bin; add ~/.cargo/bin to PATH"
            .to_string()
    })
}

/// Starts `tansu broker` on 127.0.0.1:9092 with in-memory storage, detached.
fn start_tansu(paths: &Paths) -> Result<(), String> {
    let binary = install_tansu(paths)?;
    let log = paths.log("tansu");
    let mut broker = Command::new(binary);
    broker
        .args(["broker", "--listener-url", "tcp://127.0.0.1:9092"])
        .args(["--advertised-listener-url", "tcp://127.0.0.1:9092"])
        .args(["--storage-engine", "memory://tansu/"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let by_hand = format!("setsid -f {} >> {} 2>&1", cmd::shell_line(&broker), log.display());
    let child = cmd::spawn_detached(&broker, &log)?;
    Service::Tansu.wait_ready(Some(child), &[log], &by_hand)
}

// ---------------------------------------------------------------- moto

/// The python to build the virtualenv with: Debian's own, else the first on PATH.
fn python() -> Option<PathBuf> {
    let system = PathBuf::from("/usr/bin/python3");
    if cmd::is_executable(&system) { Some(system) } else { cmd::which("python3") }
}

/// Whether `python -m venv` can work (Debian splits `ensurepip` into python3-venv).
fn can_make_venv(python: &Path) -> bool {
    cmd::output(Command::new(python).args(["-c", "import venv, ensurepip"])).is_ok()
}

/// Makes sure moto 5 is installed in our virtualenv (building it if needed).
fn install_moto(paths: &Paths) -> Result<PathBuf, String> {
    let server = paths.moto_server();
    if cmd::is_executable(&server) {
        return Ok(server);
    }
    let log = paths.log("moto-install");
    let venv = paths.moto_venv();
    let venv_python = venv.join("bin/python");
    println!("{}  not installed: pip install into {}, log {}", Service::Moto.label(), venv.display(), log.display());
    let begin = Instant::now();
    if !cmd::is_executable(&venv_python) || !cmd::is_executable(&venv.join("bin/pip")) {
        if venv.exists() {
            // A virtualenv without pip (made while python3-venv was missing): start over.
            std::fs::remove_dir_all(&venv).map_err(|e| format!("moto: removing the broken {}: {e}", venv.display()))?;
        }
        let python = python()
            .ok_or_else(|| "moto: no python3; install it with `apt-get install -y python3 python3-venv`".to_string())?;
        let mut create = Command::new(python);
        create.args(["-m", "venv"]).arg(&venv);
        cmd::run_logged(&mut create, &log)
            .map_err(|e| format!("moto: creating its virtualenv failed: {e}\n    (is python3-venv installed?)"))?;
    }
    let mut pip = Command::new(&venv_python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check"]).arg("moto[server]>=5,<6");
    let by_hand = cmd::shell_line(&pip);
    cmd::run_logged(&mut pip, &log).map_err(|e| format!("moto: installing failed: {e}\n    run by hand: {by_hand}"))?;
    println!("{}  installed in {:.0} s", Service::Moto.label(), begin.elapsed().as_secs_f64());
    if cmd::is_executable(&server) {
        Ok(server)
    } else {
        Err(format!("moto: pip installed moto[server] but {} is missing; see {}", server.display(), log.display()))
    }
}

/// Starts `moto_server` on 127.0.0.1:4566, detached.
fn start_moto(paths: &Paths) -> Result<(), String> {
    let server = install_moto(paths)?;
    let log = paths.log("moto");
    let mut command = Command::new(server);
    command.args(["-H", "127.0.0.1", "-p", "4566"]);
    let by_hand = format!("setsid -f {} >> {} 2>&1", cmd::shell_line(&command), log.display());
    let child = cmd::spawn_detached(&command, &log)?;
    Service::Moto.wait_ready(Some(child), &[log], &by_hand)
}
