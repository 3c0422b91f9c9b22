//! What the workspace's command-line programs share: logging set-up and how an error is printed on exit.

/// Logs through `tracing` to stderr; `RUST_LOG` overrides `default` (e.g. "info", "warn").
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// One line for an error and its causes, as the workspace's command-line programs print it: the causes joined with ": ",
/// leaving out a cause whose text the line already holds (our errors that name a file print their source
/// inline, so anyhow's `{:#}` would repeat it, e.g. "a.npz: No such file: No such file").
pub fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The exit of the command-line programs: prints `error: …` ([`report`]) and fails, or succeeds.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;

    #[test]
    fn causes_join_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        // A cause already printed inline by the error above it is not repeated.
        let inline = anyhow::Error::new(io).context("a.npz: No such file");
        assert_eq!(report(&inline), "a.npz: No such file");
        // Distinct causes are all kept, outermost first.
        let chained = anyhow::anyhow!("bad header").context("loading weights.safetensors");
        assert_eq!(report(&chained), "loading weights.safetensors: bad header");
    }
}
