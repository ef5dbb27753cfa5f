//! Project automation, run as `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! Deliberately dependency-free: it only sequences `cargo` and service commands.
//!
//! | command | what it does |
//! |---|---|
//! | `ci` | services up, `cargo fmt --check`, clippy `-D warnings`, every test, `cargo doc` with warnings denied, every example |
//! | `test` | services up, then every test of the workspace |
//! | `services up\|status` | installs (if missing) and starts PostgreSQL, MariaDB, RabbitMQ, a Kafka-protocol broker and an EventBridge endpoint |
//! | `bench` | the benchmarks; prints one table |
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

const USAGE: &str = "usage: cargo xtask <ci | test | services up|status | bench [filter] | examples>";

/// Everything CI checks, in the order that fails fastest.
fn ci() -> Result<(), String> {
    cmd::cargo(&["fmt", "--all", "--check"])?;
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

/// Runs the benchmarks (release builds) and prints their table.
fn bench(filter: &[String]) -> Result<(), String> {
    services::up()?;
    let mut args = vec!["run", "--release", "--package", "outbox-bench", "--"];
    args.extend(filter.iter().map(String::as_str));
    cmd::cargo(&args)
}

/// Runs every example package under `examples/` against the local services.
fn examples() -> Result<(), String> {
    services::up()?;
    for name in cmd::example_packages()? {
        println!("== example {name}");
        cmd::cargo(&["run", "--quiet", "--package", &name])?;
    }
    Ok(())
}
