//! One training run: its fixed context (configuration, data, schedules, the built model, the
//! kernel record) and its counters (what a checkpoint's [`TrainerState`] saves), with a method
//! per phase. [`super::train_with`] is the loop over them; the step's own phases are in
//! `step.rs`, the metrics lines and the epoch's evaluation in `metrics.rs`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::{Batcher, Cursor, Dataset};
use crate::error::{Result, RiglError};
use crate::gpu::ops::SgdConfig;
use crate::gpu::{gemm, GemmVariant, GpuContext};
use crate::nn::choice::{self, Decision};
use crate::nn::Network;
use crate::sparse::init::count_active;
use crate::sparse::update::{GrowRule, MaskUpdater};
use crate::sparse::{LayerSparsity, LayerSpec, PruneSchedule, UpdateSchedule};

use super::checkpoint::{self, Checkpoint, NanPolicy, RunOptions, TrainerState};
use super::exchange::Dist;
use super::kernels::KernelRecord;
use super::metrics::MetricsWriter;
use super::net::{build, Built, Net};
use super::{
    check_model_fits_data, model_file, non_finite_message, plan_layers, weight_layers, write_file,
    GpuMemory, LayerReport, Progress, RunEnd, TrainConfig, TrainSummary,
};

/// The network of a run and what changes its masks.
pub(super) struct ModelParts {
    pub(super) net: Net,
    /// How the method grows (None: no mask updates).
    pub(super) rule: Option<GrowRule>,
    /// The masked path's updater (the compressed model carries its own).
    pub(super) updater: Option<MaskUpdater>,
}

impl ModelParts {
    /// The network behind the one interface both storage forms and models of layers share.
    pub(super) fn model(&self) -> &dyn Network {
        self.net.net()
    }
}

/// FLOPs per sample (SPEC §6): a multiply-add is 2 FLOPs, a convolution's weight used at every
/// output position (SPEC §8; pooling, batch norm and activations left out).
pub(super) struct Flops {
    positions: Vec<f64>,
    /// Forward FLOPs of the dense model.
    pub(super) dense: f64,
}

impl Flops {
    fn new(layers: &[LayerSpec], plan: &[LayerSparsity]) -> Self {
        let positions: Vec<f64> = layers.iter().map(|l| l.positions() as f64).collect();
        let dense = plan
            .iter()
            .zip(&positions)
            .map(|(p, &pos)| 2.0 * p.total as f64 * pos)
            .sum();
        Flops { positions, dense }
    }

    /// Forward FLOPs with `active` weights per layer.
    pub(super) fn sparse(&self, active: &[usize]) -> f64 {
        active
            .iter()
            .zip(&self.positions)
            .map(|(&n, &p)| 2.0 * n as f64 * p)
            .sum()
    }
}

/// What changes during a run and a checkpoint carries over (with the batcher's cursor).
pub(super) struct Counters {
    pub(super) mask_updates: u64,
    pub(super) last_update_step: Option<u64>,
    /// Drop fraction of the last mask update.
    pub(super) last_drop_fraction: f32,
    /// New connections made by the last mask update.
    pub(super) last_changes: usize,
    /// Active weights per layer, as the masks in force hold them.
    pub(super) active: Vec<usize>,
    pub(super) train_flops: f64,
    /// What dense training would have spent over the same steps.
    pub(super) dense_flops: f64,
    /// The logging window: when it started, its samples, the step it started after.
    pub(super) window_since: Instant,
    pub(super) window_samples: u64,
    pub(super) window_start: u64,
    /// Loss sum and samples of the epoch so far.
    pub(super) epoch_loss: (f64, u64),
    /// Test (loss, accuracy) at the last epoch's end.
    pub(super) last_eval: (f64, f64),
    pub(super) final_train_loss: f64,
    pub(super) nan_skips: u64,
    /// Seconds in training steps (evaluation excluded), and wall seconds before a resume.
    pub(super) train_seconds: f64,
    pub(super) wall_before: f64,
    pub(super) last_checkpoint: Option<PathBuf>,
}

impl Counters {
    fn fresh(active: Vec<usize>) -> Self {
        Counters {
            mask_updates: 0,
            last_update_step: None,
            last_drop_fraction: 0.0,
            last_changes: 0,
            active,
            train_flops: 0.0,
            dense_flops: 0.0,
            window_since: Instant::now(),
            window_samples: 0,
            window_start: 0,
            epoch_loss: (0.0, 0),
            last_eval: (f64::NAN, f64::NAN),
            final_train_loss: f64::NAN,
            nan_skips: 0,
            train_seconds: 0.0,
            wall_before: 0.0,
            last_checkpoint: None,
        }
    }

    fn resumed(ck: &Checkpoint) -> Self {
        let t = &ck.trainer;
        Counters {
            mask_updates: t.mask_updates,
            last_update_step: t.last_update_step,
            last_drop_fraction: t.last_drop_fraction,
            last_changes: t.last_changes,
            active: t.active.clone(),
            train_flops: t.train_flops,
            dense_flops: t.dense_flops,
            window_since: Instant::now(),
            window_samples: t.window_samples,
            window_start: t.window_start,
            epoch_loss: (t.epoch_loss_sum, t.epoch_loss_samples),
            last_eval: (t.last_eval_loss, t.last_eval_accuracy),
            final_train_loss: t.final_train_loss,
            nan_skips: t.nan_skips,
            train_seconds: t.train_seconds,
            wall_before: t.wall_seconds,
            last_checkpoint: Some(ck.path.clone()),
        }
    }
}

/// A training run between [`Run::start`] and [`Run::finish`].
pub(super) struct Run<'a> {
    pub(super) ctx: &'a GpuContext,
    pub(super) cfg: &'a TrainConfig,
    pub(super) train: &'a Dataset,
    pub(super) test: &'a Dataset,
    pub(super) run_dir: Option<&'a Path>,
    pub(super) progress: &'a mut dyn Progress,
    pub(super) opts: &'a RunOptions,
    pub(super) t_start: Instant,
    pub(super) sizes: Vec<usize>,
    pub(super) plan: Vec<LayerSparsity>,
    /// Every layer's name (weight layers and the others), for non-finite reports.
    pub(super) layer_names: Vec<String>,
    pub(super) steps_per_epoch: u64,
    pub(super) total_steps: u64,
    pub(super) start_step: u64,
    pub(super) update: UpdateSchedule,
    pub(super) prune: PruneSchedule,
    pub(super) sgd: SgdConfig,
    pub(super) gemm_variant: GemmVariant,
    pub(super) decision: Decision,
    pub(super) record: KernelRecord,
    pub(super) parts: ModelParts,
    pub(super) flops: Flops,
    pub(super) batcher: Batcher,
    /// The batch's inputs and labels on the host.
    pub(super) x: Vec<f32>,
    pub(super) labels: Vec<u32>,
    pub(super) metrics: Option<MetricsWriter>,
    /// The step submitted and not yet waited for.
    pub(super) pending: Option<wgpu::SubmissionIndex>,
    /// Learning rate of the last step.
    pub(super) lr: f32,
    pub(super) c: Counters,
    /// The ranks of a data-parallel run (two or more), if it is one.
    pub(super) dist: Option<Dist>,
}

/// The kernels a run's model is built with, and the choices it replays.
struct KernelPlan {
    replay: Option<KernelRecord>,
    /// The replayed record when `--kernels` is unchanged: its per-layer choices are kept.
    same: bool,
    kernels: choice::KernelChoice,
    gemm_variant: GemmVariant,
}

impl KernelPlan {
    /// A resumed run uses the kernel choices of the run it continues, a run with `--kernels-from`
    /// those of the run it names (every choice is made by timing; another choice sums in another
    /// order and the results would differ in the last bits). Otherwise the tuning cache makes the
    /// choices, the same for every run on this machine.
    fn choose(ctx: &GpuContext, cfg: &TrainConfig, opts: &RunOptions) -> Result<Self> {
        let resume = opts.resume.as_ref();
        let replay: Option<KernelRecord> = match resume {
            Some(ck) => Some(KernelRecord {
                adapter: ck.trainer.adapter.clone(),
                driver: String::new(),
                backend: String::new(),
                gemm: GemmVariant::parse(&ck.trainer.gemm)?,
                gemm_picks: ck.trainer.gemm_picks.clone(),
                kernels: ck.trainer.kernels.clone(),
                reason: ck.trainer.kernels_reason.clone(),
                layers: ck.trainer.kernels_layers.clone(),
            }),
            None => opts.kernels_from.clone(),
        };
        if let Some(r) = &replay {
            r.pin(ctx);
        }
        // `--kernels` changed on resume: the new setting, with the old GEMM variant.
        let same = replay.is_some() && resume.is_none_or(|ck| ck.config.kernels == cfg.kernels);
        let kernels = match replay.as_ref().filter(|_| same) {
            Some(r) => choice::KernelChoice::parse(&r.kernels)?,
            None => cfg.kernels,
        };
        let gemm_variant = match &replay {
            Some(r) => r.gemm,
            None => gemm::choose_variant(ctx)?,
        };
        Ok(KernelPlan {
            replay,
            same,
            kernels,
            gemm_variant,
        })
    }

    fn same_kernels(&self) -> Option<&KernelRecord> {
        self.replay.as_ref().filter(|_| self.same)
    }
}

/// Checks the run's inputs before anything is built.
fn check_inputs(
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    opts: &RunOptions,
) -> Result<()> {
    cfg.validate()?;
    if opts.keep_checkpoints == 0 || opts.checkpoint_every == Some(0) {
        return Err(RiglError::invalid(
            "--keep-checkpoints and --checkpoint-every must be at least 1",
        ));
    }
    if train.features != test.features || train.classes != test.classes {
        return Err(RiglError::invalid(format!(
            "training set ({} features, {} classes) and test set ({} features, {} classes) differ",
            train.features, train.classes, test.features, test.classes
        )));
    }
    Ok(())
}

/// The training batcher (augmenting when the configuration says so) and its steps per epoch.
fn training_batcher(cfg: &TrainConfig, train: &Dataset) -> Result<(Batcher, u64)> {
    let mut batcher = Batcher::for_training(train.n, cfg.batch, cfg.seed)?;
    if let Some(a) = cfg.augmentation()? {
        batcher = batcher.with_augment(a)?;
    }
    let steps_per_epoch = batcher.batches_per_epoch() as u64;
    if steps_per_epoch == 0 {
        return Err(RiglError::invalid(format!(
            "the training set has {} samples, fewer than one batch of {}",
            train.n, cfg.batch
        )));
    }
    Ok((batcher, steps_per_epoch))
}

/// The mask update schedule (RigL, SET, SNFS) and the gradual pruning schedule.
fn schedules(cfg: &TrainConfig, total_steps: u64) -> Result<(UpdateSchedule, PruneSchedule)> {
    let update = UpdateSchedule::new(
        cfg.delta_t,
        cfg.t_end_steps(total_steps),
        cfg.alpha,
        cfg.drop_schedule,
    )?;
    let prune = PruneSchedule::new(
        0.0,
        cfg.sparsity,
        (cfg.prune_start * total_steps as f64) as u64,
        (cfg.prune_end * total_steps as f64) as u64,
        cfg.prune_every,
    )?;
    Ok((update, prune))
}

/// The model built with the run's kernels, and the record of their choice.
struct Assembled {
    parts: ModelParts,
    decision: Decision,
    gemm_variant: GemmVariant,
    record: KernelRecord,
    /// Active weights per layer in the initial masks.
    active: Vec<usize>,
}

/// The model of a data-parallel rank: rank 0 chooses the kernels (timing them, or replaying a
/// resumed run's or `--kernels-from` choices) and hands its record to the other ranks, which
/// replay it, so that every rank runs the same kernels and sums in the same order.
fn assemble_rank(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    opts: &RunOptions,
    sizes: &[usize],
    plan: &[LayerSparsity],
    sgd: SgdConfig,
    dist: &Dist,
) -> Result<Assembled> {
    let mut bytes = Vec::new();
    if dist.rank == 0 {
        let a = assemble(ctx, cfg, opts, sizes, plan, sgd)?;
        bytes = serde_json::to_vec(&a.record)
            .map_err(|e| RiglError::invalid(format!("kernel record to JSON: {e}")))?;
        dist.comm.broadcast_bytes(0, &mut bytes);
        return Ok(a);
    }
    dist.comm.broadcast_bytes(0, &mut bytes);
    let record: KernelRecord = serde_json::from_slice(&bytes)
        .map_err(|e| RiglError::invalid(format!("rank 0's kernel record: {e}")))?;
    let mut replay = opts.clone();
    if replay.resume.is_none() {
        replay.kernels_from = Some(record);
    }
    assemble(ctx, cfg, &replay, sizes, plan, sgd)
}

/// Chooses the kernels (or replays a run's choices) and builds the model with them.
fn assemble(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    opts: &RunOptions,
    sizes: &[usize],
    plan: &[LayerSparsity],
    sgd: SgdConfig,
) -> Result<Assembled> {
    let kp = KernelPlan::choose(ctx, cfg, opts)?;
    let replayed = kp.same_kernels().map(|r| r.layers.as_slice());
    let built = build(
        ctx,
        cfg,
        sizes,
        plan,
        sgd,
        kp.kernels,
        kp.gemm_variant,
        replayed,
    )?;
    let Built {
        net,
        mut decision,
        rule,
        updater,
        masks,
    } = built;
    if let Some(r) = kp.same_kernels() {
        // The decision as the run made it (reason and timings), not as the forced choice reads.
        decision.reason = r.reason.clone();
        decision.layers = r.layers.clone();
    }
    Ok(Assembled {
        record: KernelRecord::of(ctx, kp.gemm_variant, &decision),
        parts: ModelParts { net, rule, updater },
        decision,
        gemm_variant: kp.gemm_variant,
        active: masks.iter().map(|m| count_active(m)).collect(),
    })
}

/// Loads a checkpoint's model into the built one, after checking its masks hold the active
/// counts its trainer state says.
fn load_resumed(ctx: &GpuContext, model: &dyn Network, ck: &Checkpoint) -> Result<()> {
    model.load_state(ctx, &ck.model)?;
    let active = &ck.trainer.active;
    let in_masks: Vec<usize> = ck.model.masks.iter().map(|m| count_active(m)).collect();
    if &in_masks != active {
        return Err(RiglError::BadFile {
            path: ck.path.display().to_string(),
            message: format!(
                "the masks hold {in_masks:?} active weights, the trainer state says {active:?}"
            ),
        });
    }
    Ok(())
}

/// Creates the run directory with `config.toml` and `kernels.json`, and opens `metrics.jsonl`
/// (cut back to the checkpoint's length on resume).
fn open_run_dir(
    dir: &Path,
    cfg: &TrainConfig,
    record: &KernelRecord,
    resume: Option<&Checkpoint>,
) -> Result<MetricsWriter> {
    std::fs::create_dir_all(dir).map_err(|source| RiglError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    write_file(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    record.write(dir)?;
    MetricsWriter::open(
        &dir.join("metrics.jsonl"),
        resume.map(|ck| ck.trainer.metrics_bytes),
    )
}

impl<'a> Run<'a> {
    /// Validates, sets up data and schedules, builds the model (replaying kernel choices when
    /// resuming), restores a checkpoint's model and counters, opens the run directory and
    /// writes the step-0 checkpoint.
    pub(super) fn start(
        ctx: &'a GpuContext,
        cfg: &'a TrainConfig,
        train: &'a Dataset,
        test: &'a Dataset,
        run_dir: Option<&'a Path>,
        progress: &'a mut dyn Progress,
        opts: &'a RunOptions,
    ) -> Result<Self> {
        check_inputs(cfg, train, test, opts)?;
        let resume = opts.resume.as_ref();
        let t_start = Instant::now();
        check_model_fits_data(cfg, train.features, train.classes)?;
        let sizes = cfg.run_sizes(train.features, train.classes)?;
        let layers = weight_layers(cfg, &sizes)?;
        let layer_names = cfg.layout(&sizes)?.names();
        let plan = plan_layers(cfg, &sizes)?;
        let (mut batcher, steps_per_epoch) = training_batcher(cfg, train)?;
        let total_steps = steps_per_epoch * cfg.epochs as u64;
        if let Some(ck) = resume {
            checkpoint::compare(ck, cfg, &sizes, steps_per_epoch)?;
        }
        let (update, prune) = schedules(cfg, total_steps)?;
        let sgd = cfg.sgd();
        // A data-parallel rank builds its model for its shard of the global batch.
        let dist = match opts.comm.as_ref().filter(|c| c.size() > 1) {
            Some(comm) => {
                let shard = crate::dist::shard_size(cfg.batch, comm.size())?;
                Some(Dist::new(comm.clone(), train.features, shard))
            }
            None => None,
        };
        let Assembled {
            parts,
            decision,
            gemm_variant,
            record,
            active,
        } = match &dist {
            Some(d) => {
                let shard_cfg = TrainConfig {
                    batch: d.x.len() / train.features.max(1),
                    ..cfg.clone()
                };
                assemble_rank(ctx, &shard_cfg, opts, &sizes, &plan, sgd, d)?
            }
            None => assemble(ctx, cfg, opts, &sizes, &plan, sgd)?,
        };
        // Rank 0 alone writes the run directory (metrics, checkpoints, summary, model).
        let run_dir = run_dir.filter(|_| dist.as_ref().is_none_or(|d| d.rank == 0));
        let mut c = Counters::fresh(active);
        if let Some(ck) = resume {
            load_resumed(ctx, parts.model(), ck)?;
            c = Counters::resumed(ck);
            // The checkpoint's window sums are every rank's: rank 0 carries them on.
            if dist.as_ref().is_some_and(|d| d.rank != 0) {
                parts.model().set_sums(ctx, [0.0, 0.0])?;
            }
        }
        let flops = Flops::new(&layers, &plan);
        let metrics = match run_dir {
            Some(dir) => Some(open_run_dir(dir, cfg, &record, resume)?),
            None => None,
        };
        let mut start_step = 0;
        if let Some(ck) = resume {
            start_step = ck.trainer.step;
            batcher.set_cursor(Cursor {
                epoch: ck.trainer.cursor_epoch,
                batch: ck.trainer.cursor_batch,
            })?;
        }
        let mut run = Run {
            ctx,
            cfg,
            train,
            test,
            run_dir,
            progress,
            opts,
            t_start,
            sizes,
            plan,
            layer_names,
            steps_per_epoch,
            total_steps,
            start_step,
            update,
            prune,
            sgd,
            gemm_variant,
            decision,
            record,
            parts,
            flops,
            batcher,
            x: vec![0.0f32; train.features * cfg.batch],
            labels: vec![0u32; cfg.batch],
            metrics,
            pending: None,
            lr: 0.0,
            c,
            dist,
        };
        run.begin()?;
        Ok(run)
    }

    /// Step 0 of a new run: a good checkpoint exists before anything can go wrong; then the
    /// progress sink learns the run's length.
    fn begin(&mut self) -> Result<()> {
        let resumed = self.opts.resume.is_some();
        if let (Some(dir), false) = (self.run_dir, resumed) {
            let state = self.parts.model().read_state(self.ctx)?;
            self.write_checkpoint(dir, 0, 0, &state)?;
        }
        self.progress.start(self.total_steps, self.steps_per_epoch);
        match resumed {
            true => self.progress.step(self.start_step),
            false => self.parts.model().reset_sums(self.ctx)?,
        }
        Ok(())
    }

    /// Whether `step` (counted from 0) ends an epoch.
    pub(super) fn is_epoch_end(&self, step: u64) -> bool {
        (step + 1).is_multiple_of(self.steps_per_epoch)
    }

    /// Whether `step` (counted from 0) closes a logging window.
    pub(super) fn is_log_step(&self, step: u64) -> bool {
        (step + 1).is_multiple_of(self.cfg.log_every)
    }

    /// Checkpoints at a step boundary, after the GPU finished the step: at each epoch's end,
    /// every `--checkpoint-every` steps, and on a stop request, which ends the run.
    pub(super) fn checkpoint(&mut self, step: u64, end_of_epoch: bool) -> Result<Option<RunEnd>> {
        let done = step + 1;
        let stop = self.opts.stop_requested() || self.opts.stop_after_steps == Some(done);
        // The ranks of a data-parallel run stop together, at the step one of them was asked to.
        let stop = self.any_rank(stop);
        let due = end_of_epoch
            || self
                .opts
                .checkpoint_every
                .is_some_and(|n| done.is_multiple_of(n));
        let mut written = None;
        // A data-parallel checkpoint holds the window's loss sums over every rank.
        let window_sums = match due || stop {
            true => self.window_sums_over_ranks()?,
            false => None,
        };
        if let Some(dir) = self.run_dir.filter(|_| due || stop) {
            written = Some(self.checkpoint_now(dir, done, window_sums)?);
        }
        if !stop {
            return Ok(None);
        }
        self.progress.finish();
        self.wait_pending()?;
        Ok(Some(RunEnd::Stopped {
            step: done,
            checkpoint: written,
        }))
    }

    /// Waits for the step in flight, reads the model back, refuses non-finite values (naming
    /// them and the last good checkpoint) and writes the checkpoint of `done` steps.
    fn checkpoint_now(
        &mut self,
        dir: &Path,
        done: u64,
        window_sums: Option<[f32; 2]>,
    ) -> Result<PathBuf> {
        self.wait_pending()?;
        let model = self.parts.model();
        let mut state = self.ctx.scoped(
            &format!("reading the model state back for the checkpoint of step {done}"),
            || model.read_state(self.ctx),
        )?;
        if let Some(sums) = window_sums {
            state.loss_sums = sums;
        }
        let mut bad = state.non_finite(&self.layer_names);
        if !state.loss_sums.iter().all(|v| v.is_finite()) {
            bad.insert(
                0,
                format!(
                    "the training loss of steps {}..={done} is {}",
                    self.c.window_start + 1,
                    state.loss_sums[0]
                ),
            );
        }
        if !bad.is_empty() {
            return Err(non_finite_message(
                done,
                &bad,
                self.c.last_checkpoint.as_deref(),
            ));
        }
        let bytes = match self.metrics.as_mut() {
            Some(m) => m.sync()?,
            None => 0,
        };
        self.write_checkpoint(dir, done, bytes, &state)
    }

    /// Saves `state` with the trainer's state after `done` steps; it becomes the last good one.
    fn write_checkpoint(
        &mut self,
        dir: &Path,
        done: u64,
        metrics_bytes: u64,
        state: &crate::nn::ModelState,
    ) -> Result<PathBuf> {
        let path = checkpoint::save(
            dir,
            self.cfg,
            &self.sizes,
            &self.trainer_state(done, metrics_bytes),
            state,
            self.opts.keep_checkpoints,
            self.opts.stall_checkpoint_write == Some(done),
        )?;
        self.c.last_checkpoint = Some(path.clone());
        Ok(path)
    }

    /// Waits for the step in flight, if any.
    pub(super) fn wait_pending(&mut self) -> Result<()> {
        if let Some(idx) = self.pending.take() {
            self.ctx.wait("training step", idx)?;
        }
        Ok(())
    }

    /// The trainer's state at a step boundary (`step` steps done), for a checkpoint.
    pub(super) fn trainer_state(&self, step: u64, metrics_bytes: u64) -> TrainerState {
        let c = &self.c;
        TrainerState {
            step,
            total_steps: self.total_steps,
            steps_per_epoch: self.steps_per_epoch,
            cursor_epoch: self.batcher.cursor().epoch,
            cursor_batch: self.batcher.cursor().batch,
            mask_updates: c.mask_updates,
            last_update_step: c.last_update_step,
            last_drop_fraction: c.last_drop_fraction,
            last_changes: c.last_changes,
            active: c.active.clone(),
            train_flops: c.train_flops,
            dense_flops: c.dense_flops,
            window_samples: c.window_samples,
            window_start: c.window_start,
            epoch_loss_sum: c.epoch_loss.0,
            epoch_loss_samples: c.epoch_loss.1,
            last_eval_loss: c.last_eval.0,
            last_eval_accuracy: c.last_eval.1,
            final_train_loss: c.final_train_loss,
            nan_skips: c.nan_skips,
            train_seconds: c.train_seconds,
            wall_seconds: c.wall_before + self.t_start.elapsed().as_secs_f64(),
            metrics_bytes,
            gemm: self.gemm_variant.as_str().to_string(),
            kernels: self.decision.kernels.to_string(),
            kernels_reason: self.decision.reason.clone(),
            kernels_layers: self.decision.layers.clone(),
            gemm_picks: self.record.gemm_picks.clone(),
            checkpoint_every: self.opts.checkpoint_every,
            keep_checkpoints: self.opts.keep_checkpoints,
            on_nan_skip: self.opts.on_nan == NanPolicy::Skip,
            adapter: self.ctx.info.name.clone(),
        }
    }

    /// Ends a run that did every step: the summary from the final masks (density, ITOP, dead
    /// units, memory), and in the run directory `model.safetensors` and `summary.json`.
    pub(super) fn finish(self) -> Result<TrainSummary> {
        self.progress.finish();
        let (ctx, cfg, model) = (self.ctx, self.cfg, self.parts.model());
        let final_active: Vec<usize> = model
            .read_masks(ctx)?
            .iter()
            .map(|m| count_active(m))
            .collect();
        let ever_active = self.parts.net.ever_active(ctx)?;
        let total: usize = self.plan.iter().map(|p| p.total).sum();
        let layers = self.layer_reports(&final_active)?;
        let c = &self.c;
        let summary = TrainSummary {
            method: cfg.method.as_str().to_string(),
            test_accuracy: c.last_eval.1,
            test_loss: c.last_eval.0,
            final_train_loss: c.final_train_loss,
            epochs: cfg.epochs,
            steps: self.total_steps,
            samples_per_sec: (self.total_steps * cfg.batch as u64) as f64
                / c.train_seconds.max(1e-9),
            seconds: c.wall_before + self.t_start.elapsed().as_secs_f64(),
            density: final_active.iter().sum::<usize>() as f64 / total as f64,
            train_flops_vs_dense: c.train_flops / c.dense_flops,
            inference_flops_vs_dense: self.flops.sparse(&final_active) / self.flops.dense,
            itop_rate: ever_active as f64 / total as f64,
            mask_updates: c.mask_updates,
            nan_skips: c.nan_skips,
            adapter: ctx.info.name.clone(),
            layers,
            run_dir: self.run_dir.map(|d| d.display().to_string()),
            kernels: Decision {
                kernels: model.kernels(),
                ..self.decision.clone()
            },
            gpu_memory: GpuMemory::new(ctx, model.memory(), total),
            distributed: self
                .dist
                .as_ref()
                .map(|d| super::DistReport::new(d.size, d.labels.len(), &d.stats)),
        };
        if let Some(dir) = self.run_dir {
            model_file::save(ctx, model, cfg, &self.sizes, &dir.join("model.safetensors"))?;
            let json = serde_json::to_string_pretty(&summary)
                .map_err(|e| RiglError::invalid(format!("summary to JSON: {e}")))?;
            write_file(&dir.join("summary.json"), json.as_bytes())?;
        }
        Ok(summary)
    }

    /// Per layer: target and measured sparsity, and the MLP's dead hidden units (a model of
    /// layers reports none).
    fn layer_reports(&self, final_active: &[usize]) -> Result<Vec<LayerReport>> {
        let (ctx, model) = (self.ctx, self.parts.model());
        let dead = match &self.parts.net {
            Net::Model(_) => Vec::new(),
            _ => crate::cpu::mlp::dead_units(
                &self.sizes,
                &model.read_weights(ctx)?,
                &model.read_masks(ctx)?,
                &model.read_biases(ctx)?,
                &self.test.images,
                self.test.n,
            ),
        };
        Ok(self
            .plan
            .iter()
            .zip(final_active)
            .enumerate()
            .map(|(l, (p, &a))| LayerReport {
                name: p.name.clone(),
                shape: p.shape.clone(),
                sparsity: p.sparsity,
                actual_sparsity: 1.0 - a as f64 / p.total as f64,
                active: a,
                total: p.total,
                dead_units: dead.get(l).copied(),
            })
            .collect())
    }
}
