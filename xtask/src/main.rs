//! Project automation, run as `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! Deliberately dependency-free: it only sequences `cargo` and service commands.
//!
//! | command | what it does |
//! |---|---|
//! | `ci` | services up, `cargo fmt --check`, clippy `-D warnings`, every test, `cargo doc` with warnings denied, every example |
//! | `test` | services up, then every test of the workspace |
//! | `services up\|status` | installs (if missing) and starts PostgreSQL, MariaDB, RabbitMQ, a Kafka-protocol broker and an EventBridge endpoint |
//! | `bench [crate...]` | every crate's benchmarks (release builds); prints one table |
//! | `examples` | runs every example against the local services |

mod cmd;
mod services;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test") => test(),
        Some("services") => services::run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("examples") => examples(),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <ci | test | services up|status | bench [crate...] | examples>";

/// Everything CI checks, in the order that fails fastest.
fn ci() -> Result<(), String> {
    cmd::cargo(&["fmt", "--all", "--check"])?;
    // Build prerequisites and servers first: clippy already builds everything.
    services::up()?;
    cmd::cargo(&["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
    test()?;
    cmd::cargo_env(&["doc", "--workspace", "--no-deps", "--all-features"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    examples()
}

/// Brings the services up, then runs every test of the workspace.
fn test() -> Result<(), String> {
    services::up()?;
    cmd::cargo(&["test", "--workspace", "--all-features"])
}

/// Runs every crate's benchmarks (release builds) and prints their rows as one table, also
/// written to `target/bench-results.md`. `cargo xtask bench outbox-sqlx` runs one crate's.
fn bench(crates: &[String]) -> Result<(), String> {
    services::up()?;
    let mut args = vec!["bench", "--benches"];
    if crates.is_empty() {
        args.push("--workspace");
    }
    for name in crates {
        args.extend(["--package", name.as_str()]);
    }
    let rows = cmd::cargo_stdout(&args)?;
    let mut table = String::from("| area | case | figure | unit | note |\n|---|---|---|---|---|\n");
    for row in rows.lines().filter(|l| l.starts_with("| ")) {
        table.push_str(row);
        table.push('\n');
    }
    println!("\n{table}");
    let out = cmd::root().join("target").join("bench-results.md");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(&out, &table).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("(also written to {})", out.display());
    Ok(())
}

/// Runs every example package under `examples/` against the local services.
///
/// The examples are built once, with the same flags as the tests (`--workspace --all-features`),
/// so nothing is rebuilt per example under another feature set; then each binary runs directly.
fn examples() -> Result<(), String> {
    services::up()?;
    cmd::cargo(&["build", "--workspace", "--all-features", "--bins"])?;
    let bin_dir = cmd::target_dir().join("debug");
    for name in cmd::example_packages()? {
        println!("== example {name}");
        // Without CARGO in its environment an example uses the binaries built above instead of
        // building its own (example-relay-process would otherwise rebuild its relay binary).
        cmd::status(std::process::Command::new(bin_dir.join(&name)).current_dir(cmd::root()).env_remove("CARGO"))?;
    }
    Ok(())
}
