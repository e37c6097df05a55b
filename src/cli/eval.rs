//! `rigl eval`: test accuracy of a saved model.

use std::path::{Path, PathBuf};

use clap::Args;
use rigl::gpu::ops::SgdConfig;
use rigl::gpu::{gemm, GpuContext};
use rigl::nn::{Mlp, MlpConfig};
use rigl::sparse::init::count_active;
use rigl::train::checkpoint::{self, Checkpoint};
use rigl::train::model_file::{self, ModelFile};

use super::train::load_data;
use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model file (model.safetensors), a training checkpoint (ckpt-*.safetensors), or a run
    /// directory: its model.safetensors, else (a stopped run) its newest good checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data to evaluate on, as for `rigl train` (default: the data the model was trained on).
    #[arg(long)]
    dataset: Option<String>,
    /// Directory with the four MNIST-format IDX files, or the CIFAR-10 batch files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Samples per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Reads a model file, or the weights of a checkpoint (verifying its checksum).
fn read_model(arg: &Path) -> Result<(PathBuf, ModelFile), CliError> {
    let from_checkpoint = |ck: Checkpoint| {
        let file = ModelFile {
            sizes: ck.sizes,
            weights: ck.model.weights,
            masks: ck.model.masks,
            biases: ck.model.biases,
            config: Some(ck.config),
        };
        (ck.path, file)
    };
    if arg.is_dir() && !arg.join("model.safetensors").is_file() {
        let found = checkpoint::find(arg).map_err(CliError::usage)?;
        for e in &found.skipped {
            eprintln!("rigl: warning: skipping {e}");
        }
        return Ok(from_checkpoint(found.checkpoint));
    }
    let path = if arg.is_dir() {
        arg.join("model.safetensors")
    } else {
        arg.to_path_buf()
    };
    if checkpoint::is_checkpoint(&path) {
        return Ok(from_checkpoint(
            checkpoint::read(&path).map_err(CliError::usage)?,
        ));
    }
    let file = model_file::read(&path).map_err(CliError::usage)?;
    Ok((path, file))
}

pub fn run(args: EvalArgs) -> CliResult {
    let (path, file) = read_model(&args.checkpoint)?;
    let mut cfg = file.config.clone().unwrap_or_default();
    if let Some(d) = &args.dataset {
        cfg.dataset = d.clone();
        cfg.data_dir = None;
    }
    if args.data_dir.is_some() {
        cfg.data_dir = args.data_dir.clone();
        cfg.train_images = None;
        cfg.train_labels = None;
        cfg.test_images = None;
        cfg.test_labels = None;
    }
    let data = load_data(&cfg)?;
    let (features, classes) = (file.sizes[0], file.sizes[file.sizes.len() - 1]);
    if data.test.features != features || data.test.classes > classes {
        return Err(CliError::usage(format!(
            "{}: the model takes {features} inputs and {classes} classes, the data has {} and {}",
            path.display(),
            data.test.features,
            data.test.classes
        )));
    }
    if args.batch == 0 {
        return Err(CliError::usage("--batch must be at least 1"));
    }
    let ctx = GpuContext::new()?;
    let model = Mlp::new(
        &ctx,
        MlpConfig {
            sizes: file.sizes.clone(),
            batch: args.batch,
            masked: true,
            label_smoothing: 0.0,
            sgd: SgdConfig {
                lr: 0.0,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            gemm: gemm::choose_variant(&ctx)?,
        },
    )?;
    model.load(&ctx, &file.weights, &file.masks, &file.biases)?;
    let (loss, acc) = rigl::train::evaluate(&ctx, &model, &data.test)?;
    let dead = rigl::cpu::mlp::dead_units(
        &file.sizes,
        &file.weights,
        &file.masks,
        &file.biases,
        &data.test.images,
        data.test.n,
    );
    let active: usize = file.masks.iter().map(|m| count_active(m)).sum();
    let total: usize = file.masks.iter().map(Vec::len).sum();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": path.display().to_string(),
                "test_accuracy": acc, "test_loss": loss, "samples": data.test.n,
                "density": active as f64 / total as f64, "sizes": file.sizes,
                "dead_units": dead,
            })
        );
    } else {
        let dead: Vec<String> = dead
            .iter()
            .zip(&file.sizes[1..])
            .map(|(d, w)| format!("{d}/{w}"))
            .collect();
        println!(
            "{}: test accuracy {:.2}% (loss {:.4}) on {} samples; density {:.4}; dead hidden \
             units (0 on every sample) {}",
            path.display(),
            100.0 * acc,
            loss,
            data.test.n,
            active as f64 / total as f64,
            dead.join(", ")
        );
    }
    Ok(())
}
