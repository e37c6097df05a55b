//! Flags shared by the commands that describe a model without training it (`plan`,
//! `bench mask-update`): its weight layers and how sparsity is spread over them.

use std::collections::BTreeMap;

use clap::Args;
use rigl::sparse::{
    parse_layers, Distribution, DistributionConfig, LayerKind, LayerShape, LayerSpec,
};

use rigl::nn::spec::ModelSpec;

use super::CliError;

/// The weight layers of a model: `--model`, `--model-file`, `--layers`, or a fully connected
/// model from `--input`, `--hidden` and `--classes` (LeNet-300-100 by default).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A built-in model: mlp (with --input/--hidden/--classes), lenet5, wrn-22-2 or resnet-50.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["layers", "model_file"])]
    pub model: Option<String>,
    /// A model file (TOML; the grammar is in docs/models.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["layers", "input", "hidden", "classes"])]
    pub model_file: Option<std::path::PathBuf>,
    /// Layers, comma-separated: dense:INxOUT or conv:KHxKWxCINxCOUT[@HxW] (HxW: output size,
    /// default 1x1), named by kind and position (dense0, dense1, conv2, ...). Replaces
    /// --input/--hidden/--classes.
    #[arg(long, value_name = "LIST", conflicts_with_all = ["input", "hidden", "classes"])]
    pub layers: Option<String>,
    /// Input features of the fully connected model (layers fc1, fc2, ...).
    #[arg(long, default_value_t = 784)]
    pub input: usize,
    /// Hidden widths of the fully connected model, comma-separated ("" for none).
    #[arg(long, value_name = "W1,W2,..", default_value = "300,100")]
    pub hidden: String,
    /// Classes (output width) of the fully connected model.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
}

impl ModelArgs {
    /// The layers, or a bad-input error naming the flag.
    pub fn layers(&self) -> Result<Vec<LayerSpec>, CliError> {
        if let Some(path) = &self.model_file {
            let spec = ModelSpec::from_toml_file(path).map_err(CliError::usage)?;
            return spec.weight_layers().map_err(CliError::usage);
        }
        if let Some(name) = self
            .model
            .as_deref()
            .filter(|m| !m.eq_ignore_ascii_case("mlp"))
        {
            let changed = self.input != 784 || self.hidden != "300,100" || self.classes != 10;
            if changed {
                return Err(CliError::usage(format!(
                    "--input, --hidden and --classes describe the mlp model, not {name}"
                )));
            }
            let spec = ModelSpec::builtin(name, &[])
                .map_err(|e| CliError::usage(format!("--model: {e}")))?;
            return spec.weight_layers().map_err(CliError::usage);
        }
        if let Some(spec) = &self.layers {
            return parse_layers(spec).map_err(|e| CliError::usage(format!("--layers: {e}")));
        }
        let mut widths = vec![self.input];
        let hidden = self.hidden.trim();
        if !hidden.is_empty() {
            for item in hidden.split(',') {
                let w = item.trim().parse::<usize>().map_err(|_| {
                    CliError::usage(format!(
                        "--hidden: '{}' is not a positive integer width (in '{hidden}')",
                        item.trim()
                    ))
                })?;
                widths.push(w);
            }
        }
        widths.push(self.classes);
        if widths.contains(&0) {
            return Err(CliError::usage(
                "--input, --hidden and --classes must all be at least 1",
            ));
        }
        Ok(widths
            .windows(2)
            .enumerate()
            .map(|(i, io)| LayerSpec {
                kind: LayerKind::Dense,
                layer: LayerShape::new(format!("fc{}", i + 1), io),
                out_hw: (1, 1),
            })
            .collect())
    }
}

/// How a global sparsity is spread over the layers (SPEC §2).
#[derive(Args, Debug, Clone)]
pub struct SparsityArgs {
    /// Global target sparsity, in [0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub sparsity: f64,
    /// Per-layer distribution: uniform, er or erk.
    #[arg(long, default_value = "erk")]
    pub distribution: String,
    /// Keep the first layer dense (default: yes for uniform, no for er/erk);
    /// --first-layer-dense=false makes it sparse.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "BOOL")]
    pub first_layer_dense: Option<bool>,
    /// Keep the last layer dense (default: no); --last-layer-dense=false makes it sparse.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "BOOL")]
    pub last_layer_dense: Option<bool>,
    /// Fixed sparsities by layer name, left out of the budget: NAME=S,NAME=S,...
    #[arg(long, value_name = "NAME=S,..")]
    pub custom: Option<String>,
    /// Exponent of the ERK raw score (below 1 softens ERK).
    #[arg(long, default_value_t = 1.0)]
    pub erk_power_scale: f64,
}

impl SparsityArgs {
    /// The distribution options, or a bad-input error naming the flag.
    pub fn config(&self) -> Result<DistributionConfig, CliError> {
        let dist = Distribution::parse(&self.distribution)
            .map_err(|e| CliError::usage(format!("--distribution: {e}")))?;
        let mut cfg = DistributionConfig::new(dist, self.sparsity);
        cfg.first_layer_dense = self.first_layer_dense;
        cfg.last_layer_dense = self.last_layer_dense;
        cfg.erk_power_scale = self.erk_power_scale;
        if let Some(text) = &self.custom {
            cfg.custom = parse_custom(text)?;
        }
        Ok(cfg)
    }
}

/// Parses `NAME=S,NAME=S` (whitespace around items ignored; values checked by the library).
fn parse_custom(text: &str) -> Result<BTreeMap<String, f64>, CliError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--custom: '{item}' is not NAME=SPARSITY")))?;
        let name = name.trim();
        let s = value.trim().parse::<f64>().map_err(|_| {
            CliError::usage(format!(
                "--custom: '{}' is not a number (in '{item}')",
                value.trim()
            ))
        })?;
        if name.is_empty() || out.insert(name.to_string(), s).is_some() {
            return Err(CliError::usage(format!(
                "--custom: empty or repeated layer name in '{item}'"
            )));
        }
    }
    Ok(out)
}
