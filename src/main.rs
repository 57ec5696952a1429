//! `medid`: parses arguments and hands over to [`medid::cli::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Colour only for a person at a terminal, and never with NO_COLOR set: a log file or a
    // journal gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let json = medid::cli::errors::wants_json(&std::env::args().collect::<Vec<_>>());
    let cli = medid::cli::Cli::parse();
    match medid::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", medid::cli::errors::report(&e, json));
            medid::cli::errors::exit_status(&e).into()
        }
    }
}
