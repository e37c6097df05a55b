//! The training configuration: every `rigl train` flag, readable from TOML, written into the run
//! directory as the effective configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RiglError};
use crate::nn::choice::KernelChoice;
use crate::sparse::init::WeightInit;
use crate::sparse::{Distribution, DropSchedule, Method};

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Constant after warm-up.
    Constant,
    /// ×0.1 at 50% and again at 75% of the steps.
    Step,
    /// Cosine decay to zero after warm-up.
    #[default]
    Cosine,
}

impl LrSchedule {
    /// Parses `constant`, `step` or `cosine`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "constant" => Ok(LrSchedule::Constant),
            "step" => Ok(LrSchedule::Step),
            "cosine" => Ok(LrSchedule::Cosine),
            o => Err(RiglError::invalid(format!(
                "unknown learning-rate schedule '{o}' (expected constant, step or cosine)"
            ))),
        }
    }
}

/// Every setting of a training run. Defaults are SPEC §7's: the official MNIST setting (batch 100,
/// SGD with Nesterov momentum 0.9, L2 1e-4, Glorot-uniform init, ERK at 90% sparsity, cosine drop
/// fraction α = 0.3, ΔT = 100) on LeNet-300-100, with a 10-epoch cosine learning rate peaking at
/// 0.1 (the official 0.2 kills most ReLU units in so short a run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// `fashion-mnist` (default directory or `data_dir`), `idx` (with `data_dir`) or `synthetic`.
    pub dataset: String,
    /// Directory with the four MNIST-format IDX files.
    pub data_dir: Option<PathBuf>,
    /// Explicit training images (IDX); the four paths override `dataset`.
    pub train_images: Option<PathBuf>,
    /// Explicit training labels.
    pub train_labels: Option<PathBuf>,
    /// Explicit test images.
    pub test_images: Option<PathBuf>,
    /// Explicit test labels.
    pub test_labels: Option<PathBuf>,
    /// Standardise inputs with the training set's mean and deviation (else [0, 1]).
    pub standardize: bool,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Label smoothing of the cross-entropy target.
    pub label_smoothing: f32,
    /// Training method.
    pub method: Method,
    /// Global target sparsity.
    pub sparsity: f64,
    /// Sparsity distribution over layers.
    pub distribution: Distribution,
    /// Keep the first layer dense (default per distribution: ERK/ER sparse, uniform dense).
    pub first_layer_dense: Option<bool>,
    /// Keep the last layer dense.
    pub last_layer_dense: Option<bool>,
    /// ERK exponent.
    pub erk_power_scale: f64,
    /// Steps between mask updates (ΔT).
    pub delta_t: u64,
    /// Last mask-update step: a fraction of the total steps when ≤ 1, else a step number.
    pub t_end: f64,
    /// Initial drop fraction α.
    pub alpha: f32,
    /// Drop-fraction schedule.
    pub drop_schedule: DropSchedule,
    /// Gradual pruning: first pruning step as a fraction of the total steps.
    pub prune_start: f64,
    /// Gradual pruning: last pruning step as a fraction of the total steps.
    pub prune_end: f64,
    /// Gradual pruning: steps between pruning steps.
    pub prune_every: u64,
    /// Samples per step.
    pub batch: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Initialiser of the dense weights (masked after drawing).
    pub init: WeightInit,
    /// Learning-rate schedule.
    pub lr_schedule: LrSchedule,
    /// Linear warm-up, in epochs.
    pub warmup_epochs: f64,
    /// Momentum coefficient.
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Seed of initialisation, masks, data order and SET.
    pub seed: u64,
    /// Steps between logged training metrics.
    pub log_every: u64,
    /// Kernels of the sparse layers: `auto` (timed on this adapter), `sparse` (compressed) or
    /// `masked` (masked-dense).
    pub kernels: KernelChoice,
    /// A built-in model of layers (`lenet5`, `wrn-22-2`, `resnet-50`); unset: the MLP of
    /// `hidden` widths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The text of a model file (`--model-file`), kept in the run's configuration so that
    /// evaluation and resume rebuild the same model without the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_toml: Option<String>,
    /// Train on the first N samples of the training set only (unset: all of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_samples: Option<usize>,
    /// Evaluate on the first N samples of the test set only (unset: all of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_samples: Option<usize>,
    /// The official CIFAR-10 training augmentation (reflect-pad 4, random crop back to size,
    /// random left-right flip, seeded from seed, epoch and sample) for a model of images;
    /// unset: on for `cifar10` with a model of layers, off otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dataset: "fashion-mnist".into(),
            data_dir: None,
            train_images: None,
            train_labels: None,
            test_images: None,
            test_labels: None,
            standardize: false,
            hidden: vec![300, 100],
            label_smoothing: 0.0,
            method: Method::Rigl,
            sparsity: 0.9,
            distribution: Distribution::Erk,
            first_layer_dense: None,
            last_layer_dense: None,
            erk_power_scale: 1.0,
            delta_t: 100,
            t_end: 0.75,
            alpha: 0.3,
            drop_schedule: DropSchedule::Cosine,
            prune_start: 0.1,
            prune_end: 0.75,
            prune_every: 100,
            batch: 100,
            epochs: 10,
            lr: 0.1,
            init: WeightInit::GlorotUniform,
            lr_schedule: LrSchedule::Cosine,
            warmup_epochs: 0.0,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            seed: 0,
            log_every: 100,
            kernels: KernelChoice::Auto,
            model: None,
            model_toml: None,
            train_samples: None,
            test_samples: None,
            augment: None,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; unknown keys are errors naming them.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| RiglError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| RiglError::BadFile {
            path: path.display().to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| RiglError::invalid(format!("config to TOML: {e}")))
    }

    /// Checks ranges and combinations; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RiglError::invalid(m));
        if !(0.0..1.0).contains(&self.sparsity) {
            return bad(format!("sparsity must be in [0, 1), got {}", self.sparsity));
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if self.hidden.contains(&0) {
            return bad("hidden layer widths must be positive".into());
        }
        if self.delta_t == 0 {
            return bad("delta-t must be at least 1".into());
        }
        if self.t_end.is_nan() || self.t_end <= 0.0 {
            return bad(format!("t-end must be positive, got {}", self.t_end));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("alpha must be in [0, 1], got {}", self.alpha));
        }
        if !(0.0 <= self.prune_start && self.prune_start <= self.prune_end && self.prune_end <= 1.0)
        {
            return bad(format!(
                "prune start/end must satisfy 0 <= start <= end <= 1, got {} and {}",
                self.prune_start, self.prune_end
            ));
        }
        if self.prune_every == 0 {
            return bad("prune-every must be at least 1".into());
        }
        if self.warmup_epochs.is_nan() || self.warmup_epochs < 0.0 {
            return bad("warmup-epochs must be >= 0".into());
        }
        if self.log_every == 0 {
            return bad("log-every must be at least 1".into());
        }
        let files = [
            &self.train_images,
            &self.train_labels,
            &self.test_images,
            &self.test_labels,
        ];
        let given = files.iter().filter(|f| f.is_some()).count();
        if given != 0 && given != 4 {
            return bad(
                "--train-images, --train-labels, --test-images and --test-labels go together"
                    .into(),
            );
        }
        for (n, what) in [
            (self.train_samples, "--train-samples"),
            (self.test_samples, "--test-samples"),
        ] {
            if n == Some(0) {
                return bad(format!("{what} must be at least 1"));
            }
        }
        self.augmentation()?;
        if let Some(spec) = self.model_spec()? {
            if self.kernels == KernelChoice::Sparse {
                if let Err(why) = crate::train::sparse_method_support(self.method) {
                    return bad(format!(
                        "--kernels sparse with model '{}' and --method {}: {why}",
                        spec.name,
                        self.method.as_str()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The optimizer settings at the peak learning rate.
    pub fn sgd(&self) -> crate::gpu::ops::SgdConfig {
        crate::gpu::ops::SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        }
    }

    /// The training augmentation of this configuration, if any: [`Self::augment`], by default on
    /// for `cifar10` with a model of layers; an error when asked for without an image model.
    pub fn augmentation(&self) -> Result<Option<crate::data::Augment>> {
        let spec = self.model_spec()?;
        let on = self
            .augment
            .unwrap_or(spec.is_some() && self.dataset.eq_ignore_ascii_case("cifar10"));
        if !on {
            return Ok(None);
        }
        match spec {
            Some(s) if s.input[1] > 4 && s.input[2] > 4 => Ok(Some(crate::data::Augment::new(
                s.input[0], s.input[1], s.input[2],
            ))),
            Some(s) => Err(RiglError::invalid(format!(
                "--augment needs images larger than the 4-pixel padding; model '{}' takes {:?}",
                s.name, s.input
            ))),
            None => Err(RiglError::invalid(
                "--augment needs a model of images (--model lenet5, wrn-22-2, ... or \
                 --model-file), not the MLP",
            )),
        }
    }

    /// The model of layers this configuration trains, or `None` for the MLP of `hidden` widths
    /// (the `mlp` path, masked-dense or compressed).
    pub fn model_spec(&self) -> Result<Option<crate::nn::spec::ModelSpec>> {
        if let Some(text) = &self.model_toml {
            return crate::nn::spec::ModelSpec::from_toml_str(
                text,
                "the configuration's model_toml",
            )
            .map(Some);
        }
        match self.model.as_deref() {
            None => Ok(None),
            Some(m) if m.eq_ignore_ascii_case("mlp") => Ok(None),
            Some(m) => crate::nn::spec::ModelSpec::builtin(m, &[]).map(Some),
        }
    }

    /// The widths recorded for a run on `features` and `classes`: the MLP's layer widths, or
    /// `[features, classes]` for a model of layers (whose shapes come from [`Self::model_spec`]).
    pub fn run_sizes(&self, features: usize, classes: usize) -> Result<Vec<usize>> {
        Ok(match self.model_spec()? {
            Some(_) => vec![features, classes],
            None => self.sizes(features, classes),
        })
    }

    /// The stored tensors of the model of this configuration with run widths `sizes`.
    pub fn layout(&self, sizes: &[usize]) -> Result<crate::nn::ModelLayout> {
        match self.model_spec()? {
            Some(spec) => crate::nn::ModelLayout::of_spec(&spec),
            None => Ok(crate::nn::ModelLayout::mlp(sizes)),
        }
    }

    /// Layer widths for inputs of `features` and `classes`: input, hidden, classes.
    pub fn sizes(&self, features: usize, classes: usize) -> Vec<usize> {
        let mut sizes = vec![features];
        sizes.extend(&self.hidden);
        sizes.push(classes);
        sizes
    }

    /// The last mask-update step for a run of `total_steps`.
    pub fn t_end_steps(&self, total_steps: u64) -> u64 {
        if self.t_end <= 1.0 {
            (self.t_end * total_steps as f64).floor() as u64
        } else {
            self.t_end as u64
        }
    }

    /// Learning rate at `step` of `total_steps`, with `steps_per_epoch` for the warm-up.
    pub fn lr_at(&self, step: u64, total_steps: u64, steps_per_epoch: u64) -> f32 {
        let warm = (self.warmup_epochs * steps_per_epoch as f64) as u64;
        if step < warm {
            return self.lr * (step + 1) as f32 / warm as f32;
        }
        let span = total_steps.saturating_sub(warm).max(1) as f64;
        let frac = (step - warm) as f64 / span;
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Step => {
                let f = if frac >= 0.75 {
                    0.01
                } else if frac >= 0.5 {
                    0.1
                } else {
                    1.0
                };
                self.lr * f
            }
            LrSchedule::Cosine => {
                (f64::from(self.lr) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())) as f32
            }
        }
    }
}
