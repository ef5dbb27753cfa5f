//! Small helpers to run commands and report failures with the command line.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root (the parent of this crate's folder).
pub(crate) fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `cargo <args>` in the workspace root; fails if it exits non-zero.
pub(crate) fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_env(args, &[])
}

/// Runs `cargo <args>` with extra environment variables.
pub(crate) fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(root());
    for (key, value) in env {
        command.env(key, value);
    }
    status(&mut command)
}

/// Runs a command, inheriting stdio; fails with the command line if it exits non-zero.
pub(crate) fn status(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    println!("$ {shown}");
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{shown}` failed with {status}")),
        Err(error) => Err(format!("could not start `{shown}`: {error}")),
    }
}

/// Names of the packages under `examples/` (each folder with a Cargo.toml), sorted.
pub(crate) fn example_packages() -> Result<Vec<String>, String> {
    let dir = root().join("examples");
    let mut names = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(names);
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|line| {
                let line = line.trim();
                let rest = line.strip_prefix("name")?.trim_start().strip_prefix('=')?;
                Some(rest.trim().trim_matches('"').to_string())
            })
            .ok_or_else(|| format!("{} has no package name", manifest.display()))?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// How long one TCP readiness probe may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&address, PROBE_TIMEOUT).is_ok()
}

/// The first executable called `program` on `PATH`.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit set.
pub(crate) fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A command that runs `program` as root: directly when we are root, else through `sudo`.
pub(crate) fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg(program);
        command
    }
}

/// The command line as one could paste it into a shell.
pub(crate) fn shell_line(command: &Command) -> String {
    let mut words = vec![quote(&command.get_program().to_string_lossy())];
    words.extend(command.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

/// Quotes one shell word when it needs it.
fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// How each run's section of a log file xtask writes starts.
const LOG_HEADER: &str = "--- xtask,";

/// Opens `log` for appending (creating its folder) and writes a header naming `line`.
fn open_log(log: &std::path::Path, line: &str) -> Result<std::fs::File, String> {
    use std::io::Write;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening log {}: {e}", log.display()))?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    writeln!(file, "{LOG_HEADER} unix time {now}: $ {line}")
        .map_err(|e| format!("writing log {}: {e}", log.display()))?;
    Ok(file)
}

/// The last `lines` lines of a log file, indented, for error messages ("" if unreadable);
/// only the latest run's lines when xtask wrote the log (see [`open_log`]).
pub(crate) fn tail(log: &std::path::Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    let latest_run = all.iter().rposition(|line| line.starts_with(LOG_HEADER)).unwrap_or(0);
    let start = all.len().saturating_sub(lines).max(latest_run);
    all[start..].iter().map(|line| format!("\n    | {line}")).collect()
}

/// Runs a command to completion with stdin closed and stdout/stderr appended to `log`
/// (never piped, so daemons it leaves behind cannot hold xtask up).
pub(crate) fn run_logged(command: &mut Command, log: &std::path::Path) -> Result<(), String> {
    let line = shell_line(command);
    let file = open_log(log, &line)?;
    let copy = file.try_clone().map_err(|e| format!("opening log {}: {e}", log.display()))?;
    command.stdin(std::process::Stdio::null()).stdout(copy).stderr(file);
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => {
            Err(format!("`{line}` failed with {status}; its output is in {}:{}", log.display(), tail(log, 15)))
        }
        Err(error) => Err(format!("could not start `{line}`: {error}")),
    }
}

/// Runs a command that exits quickly and returns its stdout; the error holds its stderr.
pub(crate) fn output(command: &mut Command) -> Result<String, String> {
    let line = shell_line(command);
    command.stdin(std::process::Stdio::null());
    match command.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!("`{line}` failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
        Err(error) => Err(format!("could not start `{line}`: {error}")),
    }
}

/// Starts `command` in a session of its own (through `setsid`, so it outlives xtask and
/// the terminal), stdin closed and output appended to `log`; returns the running child.
pub(crate) fn spawn_detached(command: &Command, log: &std::path::Path) -> Result<std::process::Child, String> {
    let mut detached = Command::new("setsid");
    detached.arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => detached.env(key, value),
            None => detached.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        detached.current_dir(dir);
    }
    let line = shell_line(command);
    let file = open_log(log, &line)?;
    let copy = file.try_clone().map_err(|e| format!("opening log {}: {e}", log.display()))?;
    detached
        .stdin(std::process::Stdio::null())
        .stdout(copy)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("could not start `setsid {line}`: {e}"))
}

/// Runs `cargo <args>`, streaming stderr, and returns its stdout (also echoed).
pub(crate) fn cargo_stdout(args: &[&str]) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(root()).stderr(std::process::Stdio::inherit());
    let shown = format!("{command:?}");
    println!("$ {shown}");
    let output = command.output().map_err(|e| format!("could not start `{shown}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if output.status.success() { Ok(stdout) } else { Err(format!("`{shown}` failed with {}", output.status)) }
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, or `target/` in the workspace root.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { root().join(dir) }
        }
        _ => root().join("target"),
    }
}
