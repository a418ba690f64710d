//! The `varvedb` command: inspect, verify, back up and restore a store.
//! Payloads print as base64; build your own tool with
//! `varvedb::cli::Cli::new().event::<YourEvent>()` for typed JSON.

fn main() -> std::process::ExitCode {
    varvedb::cli::Cli::new().run()
}
