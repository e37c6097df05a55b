//! The run's metrics: the training window's line, the epoch's evaluation line, and
//! `metrics.jsonl`, which a checkpoint records the length of so that a resume cuts it back there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Result, RiglError};

use super::checkpoint;
use super::run::Run;
use super::{evaluate, non_finite_error, MetricsLine};

impl Run<'_> {
    /// Closes the logging window after `step` (counted from 0): reads the loss and accuracy sums
    /// (after the step in flight), refuses a non-finite loss, and writes the train line.
    pub(super) fn log_window(&mut self, step: u64) -> Result<()> {
        self.wait_pending()?;
        let (ctx, model) = (self.ctx, self.parts.model());
        let (loss_sum, correct) = model.read_sums(ctx)?;
        model.reset_sums(ctx)?;
        // Over every rank's shard of the window's batches.
        let mut sums = [loss_sum, correct];
        self.sum_over_ranks(&mut sums);
        let [loss_sum, correct] = sums;
        // A window of skipped batches only has no loss (NaN, written as null).
        let samples = self.c.window_samples as f64;
        let loss = loss_sum / samples;
        if self.c.window_samples > 0 && !loss.is_finite() {
            return Err(non_finite_error(
                model.read_state(ctx),
                &self.layer_names,
                step + 1,
                format!(
                    "the training loss of steps {}..={} is {loss}",
                    self.c.window_start + 1,
                    step + 1
                ),
                self.c.last_checkpoint.as_deref(),
            ));
        }
        self.c.epoch_loss.0 += loss_sum;
        self.c.epoch_loss.1 += self.c.window_samples;
        let line = MetricsLine {
            kind: "train",
            step: step + 1,
            epoch: (step + 1) as f64 / self.steps_per_epoch as f64,
            loss,
            accuracy: correct / samples,
            samples_per_sec: samples / self.c.window_since.elapsed().as_secs_f64(),
            ..self.line_base(step)
        };
        self.emit(&line)?;
        self.new_window(step);
        Ok(())
    }

    /// At the end of the epoch `step` (counted from 0) closes: the epoch's training loss, and
    /// the test set's loss and accuracy as the eval line.
    pub(super) fn evaluate_epoch(&mut self, step: u64) -> Result<()> {
        let (ctx, model) = (self.ctx, self.parts.model());
        self.c.final_train_loss = self.c.epoch_loss.0 / self.c.epoch_loss.1.max(1) as f64;
        self.c.epoch_loss = (0.0, 0);
        // A data-parallel run evaluates on rank 0 (the model is the same on every rank).
        self.c.last_eval = match self.is_writer() {
            true => evaluate(ctx, model, self.test)?,
            false => (f64::NAN, f64::NAN),
        };
        let line = MetricsLine {
            kind: "eval",
            step: step + 1,
            epoch: ((step + 1) / self.steps_per_epoch) as f64,
            loss: self.c.last_eval.0,
            accuracy: self.c.last_eval.1,
            samples_per_sec: 0.0,
            ..self.line_base(step)
        };
        self.emit(&line)?;
        self.parts.model().reset_sums(ctx)?;
        self.new_window(step);
        Ok(())
    }

    /// The fields every line shares: learning rate, last mask update, FLOPs, skips.
    fn line_base(&self, step: u64) -> MetricsLine {
        MetricsLine {
            kind: "",
            step: step + 1,
            epoch: 0.0,
            loss: 0.0,
            accuracy: 0.0,
            lr: self.lr,
            drop_fraction: self.c.last_drop_fraction,
            mask_changes: self.c.last_changes,
            samples_per_sec: 0.0,
            train_flops_vs_dense: self.c.train_flops / self.c.dense_flops,
            nan_skips: self.c.nan_skips,
        }
    }

    /// Hands a line to the progress sink and appends it to `metrics.jsonl`.
    fn emit(&mut self, line: &MetricsLine) -> Result<()> {
        self.progress.line(line);
        match self.metrics.as_mut() {
            Some(m) => m.write(line),
            None => Ok(()),
        }
    }

    /// A new logging window starts after `step` (counted from 0).
    fn new_window(&mut self, step: u64) {
        self.c.window_since = Instant::now();
        self.c.window_samples = 0;
        self.c.window_start = step + 1;
    }
}

/// `metrics.jsonl`, flushed after every line.
pub(super) struct MetricsWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// Bytes in the file.
    bytes: u64,
}

impl MetricsWriter {
    /// A new file, or (resuming) the existing one cut back to `resume_at` bytes and appended to.
    pub(super) fn open(path: &Path, resume_at: Option<u64>) -> Result<Self> {
        let io = |source| RiglError::Io {
            path: path.display().to_string(),
            source,
        };
        let (file, bytes) = match resume_at {
            None => (std::fs::File::create(path).map_err(io)?, 0),
            Some(at) => {
                let kept = checkpoint::truncate_metrics(path, at)?;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io)?;
                (f, kept)
            }
        };
        Ok(MetricsWriter {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Flushes and syncs the file (before a checkpoint records its length); returns the length.
    pub(super) fn sync(&mut self) -> Result<u64> {
        use std::io::Write;
        let io = |source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)?;
        Ok(self.bytes)
    }

    pub(super) fn write(&mut self, line: &MetricsLine) -> Result<()> {
        use std::io::Write;
        let io = |source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let json = serde_json::to_string(line)
            .map_err(|e| RiglError::invalid(format!("metrics to JSON: {e}")))?;
        writeln!(self.file, "{json}").map_err(io)?;
        self.bytes += json.len() as u64 + 1;
        self.file.flush().map_err(|source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}
