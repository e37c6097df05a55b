//! The `rigl` command line: info, bench (and, as they land, plan, mask-update, train, eval).

mod cli;

fn main() {
    // Mesa's device-select layer probes a display server and prints an error on headless
    // machines; adapter choice is ours, so it is not needed. Set before any thread starts.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    // Rust ignores SIGPIPE, so printing into a closed pipe (`rigl bench ... | head -1`) would
    // panic; a command-line tool should end quietly there, as other Unix tools do.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(cli::main());
}
