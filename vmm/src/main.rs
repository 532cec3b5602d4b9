//! The `vmm` command line (the library is `vmm-core`, imported as `vmm`).

#![forbid(unsafe_code)]

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // SIGINT/SIGTERM/SIGHUP remove the temporaries of outputs being written.
    if let Err(e) = vmm::files::install_signal_cleanup() {
        eprintln!("vmm: warning: cannot watch for SIGINT/SIGTERM: {e}");
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            ExitCode::from(cli::EXIT_VMM_ERROR)
        }
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text the message
/// already contains (many of our errors quote their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("cannot read the kernel k: no such file");
        let e = e.context("cannot start the VM");
        assert_eq!(
            error_chain(&e),
            "cannot start the VM: cannot read the kernel k: no such file"
        );
    }
}
