//! `uplink`: the command-line program of the uplink workspace (`uplink_tokio::cli`, built with the `cli`
//! feature).

fn main() -> std::process::ExitCode {
    uplink_tokio::cli::main()
}
