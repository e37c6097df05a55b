//! Command-line front end: `train`, `eval`, `report`, `plan`, `mask-update`, `info`, `bench`.
//! Errors print one line on stderr; exit codes: 0 success, 1 runtime failure (GPU, I/O,
//! non-finite loss), 2 bad input (arguments, files, checkpoints), 130 stopped by a signal after
//! writing a checkpoint.

mod bench;
mod bench_conv;
mod bench_sparse;
mod dist;
mod eval;
mod info;
mod mask_update;
mod model;
mod plan;
mod report;
mod train;

use clap::{Parser, Subcommand};

/// rigl: sparse neural network training with RigL on any Vulkan, Metal or DX12 GPU.
#[derive(Parser, Debug)]
#[command(name = "rigl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the GPU adapter, its features and limits, and the kernel variants chosen for it.
    Info(info::InfoArgs),
    /// Train a sparse network (RigL by default) on Fashion-MNIST or any MNIST-format IDX files.
    Train(Box<train::TrainArgs>),
    /// Test accuracy of a saved model (model.safetensors or a run directory).
    Eval(eval::EvalArgs),
    /// Compare runs: plot loss and accuracy against steps and training FLOPs, print a table.
    Report(report::ReportArgs),
    /// Time kernels on this adapter.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a model's per-layer sparsities, active counts, FLOPs and GPU memory, without
    /// training.
    Plan(plan::PlanArgs),
    /// One RigL (or SET) mask update of one layer from .npy files, written to an .npz.
    ///
    /// Drops the active weights of smallest |w| (drop count floor(n_active * F)) and grows as
    /// many positions, by |gradient| (rigl) or at random (set); new connections start at zero.
    /// Exit code 2 on bad input, with no output written.
    MaskUpdate(mask_update::MaskUpdateArgs),
}

/// An error with the exit code it should produce.
#[derive(Debug)]
pub struct CliError {
    code: i32,
    err: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        let err: anyhow::Error = e.into();
        let code = match err.downcast_ref::<rigl::RiglError>() {
            Some(
                rigl::RiglError::InvalidArgument(_)
                | rigl::RiglError::BadFile { .. }
                | rigl::RiglError::TooLarge { .. },
            ) => 2,
            _ => 1,
        };
        CliError { code, err }
    }
}

impl CliError {
    /// A bad-input error (exit code 2).
    pub fn usage(msg: impl std::fmt::Display) -> Self {
        CliError {
            code: 2,
            err: anyhow::anyhow!("{msg}"),
        }
    }

    /// Exit with `code`, the message already printed.
    pub fn exit(code: i32) -> Self {
        CliError {
            code,
            err: anyhow::anyhow!(""),
        }
    }
}

/// Result of a subcommand.
pub type CliResult = Result<(), CliError>;

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Report(a) => report::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Plan(a) => plan::run(a),
        Command::MaskUpdate(a) => mask_update::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{:#}", e.err);
            if !msg.is_empty() {
                eprintln!("rigl: error: {msg}");
            }
            e.code
        }
    }
}
