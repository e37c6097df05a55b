//! `rigl eval`: test accuracy of a saved model.

use std::path::{Path, PathBuf};

use clap::Args;
use rigl::cpu::model::{HostModel, HostNorm};
use rigl::gpu::ops::SgdConfig;
use rigl::gpu::{gemm, GpuContext};
use rigl::nn::model::GpuModel;
use rigl::nn::spec::ModelSpec;
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
            norms: ck
                .model
                .norms
                .into_iter()
                .map(|n| HostNorm {
                    gamma: n.gamma,
                    beta: n.beta,
                    mean: n.mean,
                    var: n.var,
                })
                .collect(),
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
    let spec = cfg.model_spec().map_err(CliError::usage)?;
    if let Some(spec) = spec {
        return eval_model(&ctx, &path, spec, file, &data.test, args.batch, args.json);
    }
    let model = Mlp::new(
        &ctx,
        MlpConfig {
            sizes: file.sizes.clone(),
            batch: args.batch,
            masked: true,
            label_smoothing: 0.0,
            sgd: SgdConfig::AT_REST,
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

/// Evaluates a model of layers (`--model`, `--model-file` runs): the recorded model rebuilt
/// with the file's weights, masks, biases and batch norms, batch norm on running statistics.
fn eval_model(
    ctx: &GpuContext,
    path: &Path,
    spec: ModelSpec,
    file: ModelFile,
    test: &rigl::data::Dataset,
    batch: usize,
    json: bool,
) -> CliResult {
    let mut host = HostModel::new(spec, &mut |_, shape| vec![0.0; shape.iter().product()])
        .map_err(CliError::usage)?;
    if host.weights.len() != file.weights.len() || host.norms.len() != file.norms.len() {
        return Err(CliError::usage(format!(
            "{}: the file's tensors do not match model '{}'",
            path.display(),
            host.spec.name
        )));
    }
    for (i, hw) in host.weights.iter_mut().enumerate() {
        hw.w = file.weights[i].clone();
        hw.mask = file.masks[i].clone();
        if hw.bias.is_some() {
            hw.bias = Some(file.biases[i].clone());
        }
    }
    host.norms = file.norms.clone();
    let model = GpuModel::new(ctx, &host, batch, 0)?;
    let (loss, acc) = rigl::train::evaluate(ctx, &model, test)?;
    let active: usize = file.masks.iter().map(|m| count_active(m)).sum();
    let total: usize = file.masks.iter().map(Vec::len).sum();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": path.display().to_string(),
                "model": host.spec.name,
                "test_accuracy": acc, "test_loss": loss, "samples": test.n,
                "density": active as f64 / total as f64, "sizes": file.sizes,
            })
        );
    } else {
        println!(
            "{}: model {}: test accuracy {:.2}% (loss {:.4}) on {} samples; density {:.4}",
            path.display(),
            host.spec.name,
            100.0 * acc,
            loss,
            test.n,
            active as f64 / total as f64
        );
    }
    Ok(())
}
