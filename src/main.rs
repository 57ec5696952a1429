//! `medid`: parses arguments and hands over to [`medid::cli::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let json = medid::cli::errors::wants_json(&std::env::args().collect::<Vec<_>>());
    let cli = medid::cli::Cli::parse();
    // `serve` installs its log once its configuration (which may ask for JSON) is read.
    if !matches!(cli.command, medid::cli::Command::Serve(_)) {
        medid::logging::init(medid::logging::LogFormat::Text);
    }
    match medid::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", medid::cli::errors::report(&e, json));
            medid::cli::errors::exit_status(&e).into()
        }
    }
}
