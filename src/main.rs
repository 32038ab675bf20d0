//! The `shardgate` command: CLI only; everything else lives in the library.

use mimalloc::MiMalloc;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const USAGE: &str = "usage:
  shardgate                     run the demo (gateway on config/demo.ron + demo backends)
  shardgate --config FILE       serve with FILE
  shardgate check FILE          validate FILE and exit (0 valid, 2 invalid)
  shardgate --help | --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match strs.as_slice() {
        [] | ["demo"] => shardgate::cli::demo(),
        ["--config" | "-c", file] => shardgate::cli::serve(file),
        ["check", file] | ["--check", file] => shardgate::cli::check(file),
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("shardgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
