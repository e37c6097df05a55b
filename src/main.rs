//! The `rigl` command line: info, bench (and, as they land, plan, mask-update, train, eval).

mod cli;

fn main() {
    // Mesa's device-select layer probes a display server and prints an error on headless
    // machines; adapter choice is ours, so it is not needed. Set before any thread starts.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    std::process::exit(cli::main());
}
