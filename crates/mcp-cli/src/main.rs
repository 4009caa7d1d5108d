//! `mcp`: the command-line tool of mcp-rs.
//!
//! Every failure is one clear line on stderr and a non-zero exit code.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mcp_cli::decode;

/// Client, server and tools for MCP, the binary microservice protocol (not the Model
/// Context Protocol).
#[derive(Debug, Parser)]
#[command(name = "mcp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the frames of a capture (binary or hex; a file, or stdin when omitted).
    Decode {
        /// The capture; stdin when omitted.
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode { file } => run_decode(file),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("mcp: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_decode(file: Option<PathBuf>) -> Result<ExitCode, String> {
    let input = match &file {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            buf
        }
    };
    let bytes = decode::parse_input(&input)?;
    let summary = decode::describe(&bytes);
    print!("{}", summary.text);
    if summary.problems > 0 {
        eprintln!(
            "mcp: {} damaged or malformed frame(s) among {} frame(s)",
            summary.problems,
            summary.frames + summary.problems
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
