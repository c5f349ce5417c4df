use clap::Parser;
use memscale::cli::{self, Cli, Command};
use memscale::exit;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    cli::init_logging(cli.log_format);
    let code = match cli.command {
        Command::Check(a) => cli::check(&a),
        Command::Status(a) => cli::status(&a),
        Command::Migrations(a) => cli::migrations(&a),
        Command::Adjust(a) => cli::adjust(&a),
        Command::Pin(a) => cli::pin(&a, true),
        Command::Unpin(a) => cli::pin(&a, false),
        Command::Simulate(a) => memscale::sim::cmd::simulate(&a),
        Command::PackageAssets(a) => memscale::assets::write(&a.dir),
        Command::Run(a) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(cli::run(a)),
            Err(e) => {
                eprintln!("memscale: cannot start the runtime: {e}");
                exit::EXIT_RUNTIME
            }
        },
    };
    std::process::exit(code);
}
