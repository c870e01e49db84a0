//! `meridian`: run a control-plane node (`dev`, `server`) or talk to one (every other
//! subcommand). See `meridian --help`.

fn main() -> std::process::ExitCode {
    meridian_control_plane::cli::main()
}
