//! `rigl train`: sparse training end to end, with live progress and a run directory.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rigl::data::{DataSource, IdxFiles, SyntheticSpec};
use rigl::sparse::plan::shape_text;
use rigl::sparse::{Distribution, DropSchedule, Method};
use rigl::train::checkpoint;
use rigl::train::kernels::KernelRecord;
use rigl::train::{
    self, LrSchedule, MetricsLine, NanPolicy, Progress, RunEnd, RunOptions, TrainConfig,
    TrainSummary,
};

use super::dist::Ranks;
use super::{CliError, CliResult};

/// Flags of `rigl train`. Every one is optional: unset flags take the value from `--config` or
/// the default.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// TOML file with any of these settings (flags given on the command line win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory (default runs/<date>-<time>-<method>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// fashion-mnist (default), idx (with --data-dir), cifar10 (with --data-dir) or synthetic.
    #[arg(long)]
    dataset: Option<String>,
    /// Directory with the four MNIST-format IDX files (.gz or raw), or the CIFAR-10 batch files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Training images (IDX); give all four file flags together.
    #[arg(long)]
    train_images: Option<PathBuf>,
    /// Training labels (IDX).
    #[arg(long)]
    train_labels: Option<PathBuf>,
    /// Test images (IDX).
    #[arg(long)]
    test_images: Option<PathBuf>,
    /// Test labels (IDX).
    #[arg(long)]
    test_labels: Option<PathBuf>,
    /// Standardise inputs (training mean and deviation) instead of [0, 1].
    #[arg(long)]
    standardize: bool,
    /// Train on the first N training samples only.
    #[arg(long, value_name = "N")]
    train_samples: Option<usize>,
    /// Evaluate on the first N test samples only.
    #[arg(long, value_name = "N")]
    test_samples: Option<usize>,
    /// The CIFAR-10 training augmentation (reflect-pad 4, random crop, random flip): true or
    /// false (default: true for --dataset cifar10 with a model of images).
    #[arg(long, value_name = "BOOL")]
    augment: Option<bool>,
    /// Model: mlp (default, with --hidden), lenet5, wrn-22-2 or resnet-50; its input shape must
    /// match the dataset's features.
    #[arg(long, value_name = "NAME", conflicts_with = "model_file")]
    model: Option<String>,
    /// A model file (TOML, docs/models.md); its text is recorded in the run's configuration.
    #[arg(long, value_name = "FILE")]
    model_file: Option<PathBuf>,
    /// Hidden layer widths of the mlp model, e.g. 300,100.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Label smoothing.
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// dense, static, set, snfs, rigl (default) or prune.
    #[arg(long)]
    method: Option<String>,
    /// Global sparsity in [0, 1) (default 0.9).
    #[arg(long)]
    sparsity: Option<f64>,
    /// uniform, er or erk (default).
    #[arg(long)]
    distribution: Option<String>,
    /// Keep the first layer dense (true/false).
    #[arg(long)]
    first_layer_dense: Option<bool>,
    /// Keep the last layer dense (true/false).
    #[arg(long)]
    last_layer_dense: Option<bool>,
    /// ERK exponent.
    #[arg(long)]
    erk_power_scale: Option<f64>,
    /// Steps between mask updates (ΔT, default 100).
    #[arg(long)]
    delta_t: Option<u64>,
    /// Last mask update: fraction of the steps (≤ 1) or a step number (default 0.75).
    #[arg(long)]
    t_end: Option<f64>,
    /// Initial drop fraction α (default 0.3).
    #[arg(long)]
    alpha: Option<f32>,
    /// cosine (default) or constant.
    #[arg(long)]
    drop_schedule: Option<String>,
    /// Pruning: first pruning step, fraction of the steps.
    #[arg(long)]
    prune_start: Option<f64>,
    /// Pruning: last pruning step, fraction of the steps.
    #[arg(long)]
    prune_end: Option<f64>,
    /// Pruning: steps between pruning steps.
    #[arg(long)]
    prune_every: Option<u64>,
    /// Samples per step (default 100).
    #[arg(long)]
    batch: Option<usize>,
    /// Epochs (default 10).
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate (default 0.1).
    #[arg(long)]
    lr: Option<f32>,
    /// Weight initialiser: glorot_uniform (default, as the official MNIST setting) or he_normal.
    #[arg(long, value_name = "he_normal|glorot_uniform")]
    init: Option<String>,
    /// constant, step or cosine (default).
    #[arg(long)]
    lr_schedule: Option<String>,
    /// Linear warm-up in epochs.
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Momentum (default 0.9).
    #[arg(long)]
    momentum: Option<f32>,
    /// Nesterov momentum (true/false, default true).
    #[arg(long)]
    nesterov: Option<bool>,
    /// L2 weight decay (default 1e-4).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Kernels of the sparse layers: auto (default: both timed once on this adapter, the faster
    /// kept), sparse (compressed: memory and work scale with the density) or masked (dense
    /// storage with a mask, the reference path). Sparse runs static, set and rigl.
    #[arg(long)]
    kernels: Option<String>,
    /// Replay the kernel choices of another run (its RUN_DIR/kernels.json, or that file): the
    /// GEMM variant, the per-shape picks and the sparse-or-masked path of every layer, so this
    /// run sums in the same order as that one. Without it, the on-disk tuning cache decides,
    /// the same for every run on this machine.
    #[arg(long, value_name = "RUN_DIR_OR_FILE", conflicts_with_all = ["kernels", "resume"])]
    kernels_from: Option<PathBuf>,
    /// Steps between logged metrics (default 100).
    #[arg(long)]
    log_every: Option<u64>,
    /// Continue a stopped run: its run directory (newest good checkpoint) or a checkpoint file.
    /// Settings not given on the command line come from the checkpoint.
    #[arg(long, value_name = "RUN_DIR_OR_FILE")]
    resume: Option<PathBuf>,
    /// Write a checkpoint every N steps (besides step 0 and the end of every epoch).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// Checkpoints kept in RUN_DIR/checkpoints (default 3; the oldest are deleted).
    #[arg(long, value_name = "K")]
    keep_checkpoints: Option<usize>,
    /// On a non-finite loss: stop (default; exit code 1, last good checkpoint kept) or skip the
    /// batch (counted as nan_skips; every step then waits for its loss, which is slower). A
    /// resumed run keeps the three checkpoint and NaN settings of the run unless given.
    #[arg(long, value_name = "stop|skip")]
    on_nan: Option<String>,
    /// Testing: stop with a checkpoint once N steps are done, as Ctrl-C does.
    #[arg(long, hide = true)]
    stop_after_steps: Option<u64>,
    /// Testing: stall forever half-way through writing the checkpoint of step N.
    #[arg(long, hide = true)]
    test_stall_checkpoint_write: Option<u64>,
}

impl TrainArgs {
    /// The effective configuration: `--config`, else `base` (a resumed run's), else the defaults,
    /// overridden by the given flags.
    pub fn config_over(&self, base: Option<&TrainConfig>) -> Result<TrainConfig, CliError> {
        let mut c = match (&self.config, base) {
            (Some(p), _) => TrainConfig::from_toml_file(p).map_err(CliError::usage)?,
            (None, Some(b)) => b.clone(),
            (None, None) => TrainConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            label_smoothing,
            sparsity,
            erk_power_scale,
            delta_t,
            t_end,
            alpha,
            prune_start,
            prune_end,
            prune_every,
            batch,
            epochs,
            lr,
            warmup_epochs,
            momentum,
            nesterov,
            weight_decay,
            seed,
            log_every,
            hidden
        );
        if let Some(v) = &self.dataset {
            c.dataset = v.clone();
        }
        for (src, dst) in [
            (&self.data_dir, &mut c.data_dir),
            (&self.train_images, &mut c.train_images),
            (&self.train_labels, &mut c.train_labels),
            (&self.test_images, &mut c.test_images),
            (&self.test_labels, &mut c.test_labels),
        ] {
            if src.is_some() {
                *dst = src.clone();
            }
        }
        if self.standardize {
            c.standardize = true;
        }
        if self.train_samples.is_some() {
            c.train_samples = self.train_samples;
        }
        if self.test_samples.is_some() {
            c.test_samples = self.test_samples;
        }
        if self.augment.is_some() {
            c.augment = self.augment;
        }
        if self.first_layer_dense.is_some() {
            c.first_layer_dense = self.first_layer_dense;
        }
        if self.last_layer_dense.is_some() {
            c.last_layer_dense = self.last_layer_dense;
        }
        if let Some(m) = &self.method {
            c.method = Method::parse(m)?;
        }
        if let Some(d) = &self.distribution {
            c.distribution = Distribution::parse(d)?;
        }
        if let Some(d) = &self.drop_schedule {
            c.drop_schedule = DropSchedule::parse(d)?;
        }
        if let Some(i) = &self.init {
            c.init = rigl::sparse::init::WeightInit::parse(i)?;
        }
        if let Some(s) = &self.lr_schedule {
            c.lr_schedule = LrSchedule::parse(s)?;
        }
        if let Some(k) = &self.kernels {
            c.kernels = rigl::nn::choice::KernelChoice::parse(k)?;
        }
        apply_model_flags(&mut c, self.model.as_deref(), self.model_file.as_deref())?;
        if self.hidden.is_some() && c.model_spec()?.is_some() {
            return Err(CliError::usage(
                "--hidden describes the mlp model; it cannot be combined with --model NAME or --model-file",
            ));
        }
        c.validate()?;
        Ok(c)
    }
}

/// Sets the model of a configuration from `--model NAME` (`mlp` is the default MLP of
/// `hidden` widths) or `--model-file FILE` (its text is recorded, so evaluation and resume need
/// no file). Unknown names and bad files are bad input.
pub fn apply_model_flags(
    c: &mut TrainConfig,
    model: Option<&str>,
    model_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    if let Some(name) = model {
        rigl::nn::spec::ModelSpec::builtin(name, &[])
            .map_err(|e| CliError::usage(format!("--model: {e}")))?;
        c.model_toml = None;
        c.model = (!name.eq_ignore_ascii_case("mlp")).then(|| name.to_ascii_lowercase());
    }
    if let Some(path) = model_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("--model-file {}: {e}", path.display())))?;
        rigl::nn::spec::ModelSpec::from_toml_str(&text, &path.display().to_string())
            .map_err(CliError::usage)?;
        c.model = None;
        c.model_toml = Some(text);
    }
    Ok(())
}

/// The data source of a configuration.
pub fn data_source(c: &TrainConfig) -> Result<DataSource, CliError> {
    if let (Some(ti), Some(tl), Some(si), Some(sl)) = (
        &c.train_images,
        &c.train_labels,
        &c.test_images,
        &c.test_labels,
    ) {
        return Ok(DataSource::Files(IdxFiles {
            train_images: ti.clone(),
            train_labels: tl.clone(),
            test_images: si.clone(),
            test_labels: sl.clone(),
        }));
    }
    let synthetic = SyntheticSpec {
        seed: c.seed,
        ..SyntheticSpec::default()
    };
    DataSource::from_flags(&c.dataset, c.data_dir.as_deref(), synthetic).map_err(CliError::usage)
}

/// Loads train and test sets; any failure is bad input (exit code 2).
pub fn load_data(c: &TrainConfig) -> Result<rigl::data::TrainTest, CliError> {
    let mut tt = data_source(c)?.load().map_err(CliError::usage)?;
    for (set, n) in [
        (&mut tt.train, c.train_samples),
        (&mut tt.test, c.test_samples),
    ] {
        if let Some(n) = n {
            set.truncate(n);
        }
    }
    if c.standardize {
        tt.standardize();
    }
    Ok(tt)
}

/// `YYYYmmdd-HHMMSS` in UTC.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Progress on a terminal (a bar) or as plain lines on stderr.
pub struct CliProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl CliProgress {
    /// A bar when stderr is a terminal, else plain lines.
    pub fn new(quiet: bool) -> Self {
        CliProgress { bar: None, quiet }
    }
}

impl Progress for CliProgress {
    fn start(&mut self, total_steps: u64, _steps_per_epoch: u64) {
        if std::io::stderr().is_terminal() && !self.quiet {
            let bar = ProgressBar::new(total_steps);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {elapsed_precise}<{eta_precise} {msg}",
            ) {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
    }

    fn line(&mut self, l: &MetricsLine) {
        let text = match l.kind {
            "eval" => format!(
                "epoch {:>3.0} step {:>6} | test loss {:.4} acc {:.2}% | train FLOPs {:.3}x dense",
                l.epoch,
                l.step,
                l.loss,
                100.0 * l.accuracy,
                l.train_flops_vs_dense
            ),
            _ => format!(
                "epoch {:>6.2} step {:>6} | loss {:.4} acc {:.2}% | lr {:.4} drop {:.3} new {} | {:.0} samples/s",
                l.epoch,
                l.step,
                l.loss,
                100.0 * l.accuracy,
                l.lr,
                l.drop_fraction,
                l.mask_changes,
                l.samples_per_sec
            ),
        };
        match &self.bar {
            Some(bar) => {
                if l.kind == "eval" {
                    bar.println(text);
                } else {
                    bar.set_message(format!(
                        "loss {:.4} acc {:.1}% drop {:.3} {:.0}/s",
                        l.loss,
                        100.0 * l.accuracy,
                        l.drop_fraction,
                        l.samples_per_sec
                    ));
                }
            }
            None if !self.quiet => eprintln!("{text}"),
            None => {}
        }
    }

    fn step(&mut self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Prints a summary table.
pub fn print_summary(s: &TrainSummary) {
    println!(
        "{} on {}: test accuracy {:.2}% (loss {:.4}), final train loss {:.4}",
        s.method,
        s.adapter,
        100.0 * s.test_accuracy,
        s.test_loss,
        s.final_train_loss
    );
    println!(
        "{} epochs, {} steps, {:.0} samples/s, {:.1} s; {} mask updates",
        s.epochs, s.steps, s.samples_per_sec, s.seconds, s.mask_updates
    );
    println!(
        "density {:.4}; training FLOPs {:.3}x dense, inference FLOPs {:.3}x dense; ITOP rate {:.3}",
        s.density, s.train_flops_vs_dense, s.inference_flops_vs_dense, s.itop_rate
    );
    let m = &s.gpu_memory;
    println!(
        "kernels {} ({}); GPU memory of weights, gradients, momentum and masks/indexes {} \
         ({:.3}x the dense model's {}), plus {} of update scratch; all buffers and textures \
         held (with activations and GEMM operand copies): {}",
        s.kernels.kernels,
        s.kernels.reason,
        human_bytes(m.model_bytes),
        m.ratio_vs_dense,
        human_bytes(m.dense_bytes),
        human_bytes(m.update_scratch_bytes),
        human_bytes(m.held_bytes)
    );
    println!(
        "{:<6} {:>12} {:>8} {:>8} {:>10} {:>10} {:>11} {:>10}",
        "layer", "shape", "target", "actual", "active", "total", "GPU bytes", "dead units"
    );
    for (l, (_, bytes)) in s.layers.iter().zip(&m.layers) {
        println!(
            "{:<6} {:>12} {:>8.4} {:>8.4} {:>10} {:>10} {:>11} {:>10}",
            l.name,
            shape_text(&l.shape),
            l.sparsity,
            l.actual_sparsity,
            l.active,
            l.total,
            human_bytes(*bytes),
            l.dead_units
                .map_or("-".to_string(), |d| format!("{d}/{}", l.shape[1]))
        );
    }
    if let Some(d) = &s.run_dir {
        println!("run directory: {d}");
    }
}

/// Exit code of a run stopped by a signal (or `--stop-after-steps`) after writing a checkpoint.
pub const EXIT_STOPPED: i32 = 130;

/// SIGINT/SIGTERM (Ctrl-C, Ctrl-Break on Windows): the first asks the trainer to finish the
/// current step and write a checkpoint; a second one exits at once (the atomic checkpoint writes
/// keep the previous checkpoint readable).
fn install_stop_handler() -> Result<Arc<AtomicBool>, CliError> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("rigl: stopping now, without a checkpoint of the current step");
            std::process::exit(EXIT_STOPPED);
        }
        eprintln!(
            "rigl: stopping after the current step with a checkpoint (again to quit at once)"
        );
    })
    .map_err(|e| CliError::from(anyhow::anyhow!("installing the signal handler: {e}")))?;
    Ok(flag)
}

/// Bytes as B, KiB or MiB.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

pub fn run(args: TrainArgs) -> CliResult {
    let ranks = Ranks::start()?;
    let result = run_rank(args, &ranks);
    ranks.finish(result, EXIT_STOPPED)
}

/// The checkpoint `--resume PATH` names: the newest good one of a run directory. The ranks of a
/// data-parallel run resume from the one rank 0 found.
fn find_resume(path: &std::path::Path, ranks: &Ranks) -> Result<checkpoint::Found, CliError> {
    let Some(comm) = ranks.comm() else {
        return checkpoint::find(path).map_err(CliError::usage);
    };
    let mut chosen = Vec::new();
    let found = match comm.rank() {
        0 => {
            let f = checkpoint::find(path).map_err(CliError::usage)?;
            chosen = f.checkpoint.path.display().to_string().into_bytes();
            Some(f)
        }
        _ => None,
    };
    comm.broadcast_bytes(0, &mut chosen);
    match found {
        Some(f) => Ok(f),
        None => {
            let p = PathBuf::from(String::from_utf8_lossy(&chosen).into_owned());
            checkpoint::find(&p).map_err(CliError::usage)
        }
    }
}

fn run_rank(args: TrainArgs, ranks: &Ranks) -> CliResult {
    let writer = ranks.is_writer();
    let found = match &args.resume {
        Some(p) => Some(find_resume(p, ranks)?),
        None => None,
    };
    if let Some(f) = &found {
        for e in &f.skipped {
            eprintln!("rigl: warning: skipping {e}");
        }
        if !f.skipped.is_empty() {
            eprintln!(
                "rigl: falling back to the newest good checkpoint, {}",
                f.checkpoint.path.display()
            );
        }
    }
    let resume = found.map(|f| f.checkpoint);
    let cfg = args.config_over(resume.as_ref().map(|c| &c.config))?;
    // Each rank trains on an equal shard of every global batch.
    rigl::dist::shard_size(cfg.batch, ranks.size()).map_err(CliError::usage)?;
    let data = load_data(&cfg)?;
    if let Some(ck) = &resume {
        let sizes = cfg
            .run_sizes(data.train.features, data.train.classes)
            .map_err(CliError::usage)?;
        let per_epoch = (data.train.n / cfg.batch.max(1)) as u64;
        let soft = checkpoint::compare(ck, &cfg, &sizes, per_epoch).map_err(CliError::usage)?;
        for d in soft {
            eprintln!("rigl: warning: resuming with a changed setting, {d}: the run will differ from one never stopped");
        }
    }
    let kernels_from = match &args.kernels_from {
        Some(p) => Some(KernelRecord::read(p).map_err(CliError::usage)?),
        None => None,
    };
    let ctx = ranks.context()?;
    if ctx.is_software() && !args.json && writer {
        eprintln!(
            "note: running on the software adapter '{}' (no GPU driver found or chosen)",
            ctx.info.name
        );
    }
    if let Some((record, file)) = &kernels_from {
        if let Some(w) = record.mismatch(&ctx) {
            eprintln!("rigl: warning: {}: {w}", file.display());
        }
    }
    let out = match (&args.out, &resume) {
        (Some(o), _) => o.clone(),
        (None, Some(ck)) => checkpoint::run_dir_of(&ck.path),
        (None, None) => {
            PathBuf::from("runs").join(format!("{}-{}", timestamp(), cfg.method.as_str()))
        }
    };
    if let Some(ck) = &resume {
        if ck.trainer.adapter != ctx.info.name {
            eprintln!(
                "rigl: warning: the checkpoint was written on '{}', this is '{}': results will differ in the last bits",
                ck.trainer.adapter, ctx.info.name
            );
        }
        if !args.json && writer {
            eprintln!(
                "resuming {} from {} at step {} of {}",
                out.display(),
                ck.path.display(),
                ck.trainer.step,
                ck.trainer.total_steps
            );
        }
        if writer {
            checkpoint::remove_stale_temporaries(&out)?;
            for p in checkpoint::remove_newer(&out, ck.trainer.step)? {
                eprintln!(
                    "rigl: removed {}, newer than the checkpoint resumed from",
                    p.display()
                );
            }
        }
    }
    let before = resume.as_ref().map(|c| &c.trainer);
    let on_nan = match &args.on_nan {
        Some(p) => NanPolicy::parse(p)?,
        None if before.is_some_and(|t| t.on_nan_skip) => NanPolicy::Skip,
        None => NanPolicy::Stop,
    };
    let opts = RunOptions {
        checkpoint_every: args
            .checkpoint_every
            .or(before.and_then(|t| t.checkpoint_every)),
        keep_checkpoints: args
            .keep_checkpoints
            .or(before.map(|t| t.keep_checkpoints))
            .unwrap_or(3),
        resume,
        on_nan,
        stop: Some(install_stop_handler()?),
        stop_after_steps: args.stop_after_steps,
        stall_checkpoint_write: args.test_stall_checkpoint_write,
        kernels_from: kernels_from.map(|(r, _)| r),
        comm: ranks.comm(),
    };
    if let (Some(comm), true) = (ranks.comm(), writer) {
        eprintln!(
            "data-parallel over {} ranks: a global batch of {} in shards of {}",
            comm.size(),
            cfg.batch,
            cfg.batch / comm.size()
        );
    }
    // The other ranks of a data-parallel run stay quiet; rank 0 reports.
    let mut progress = CliProgress::new(args.json || !writer);
    let end = train::train_with(
        &ctx,
        &cfg,
        &data.train,
        &data.test,
        Some(&out),
        &mut progress,
        &opts,
    )?;
    let summary = match end {
        RunEnd::Finished(s) => s,
        RunEnd::Stopped { .. } if !writer => return Err(CliError::exit(EXIT_STOPPED)),
        RunEnd::Stopped { step, checkpoint } => {
            let at = checkpoint.map_or_else(|| "-".to_string(), |p| p.display().to_string());
            eprintln!(
                "rigl: stopped after step {step}; checkpoint {at}\nresume with: rigl train --resume {}",
                out.display()
            );
            return Err(CliError::exit(EXIT_STOPPED));
        }
    };
    if !writer {
        return Ok(());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| CliError::usage(e.to_string()))?
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}
