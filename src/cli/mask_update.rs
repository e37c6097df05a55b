//! `rigl mask-update`: one RigL (or SET) mask update of one layer from `.npy` files, for users of
//! other frameworks. Runs on the GPU (`sparse::update::MaskUpdater`) or, with `--cpu`, on the
//! CPU twin (`cpu::mask_update`); both give identical output.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use rigl::cpu::mask_update::{drop_count, rigl_update, set_update};
use rigl::gpu::{GpuContext, Tensor};
use rigl::npy::{self, NpyArray, NpyData, NpyDataRef, NpyView};
use rigl::sparse::update::{GrowRule, LayerCounts, LayerPlacement, MaskUpdater};
use rigl::RiglError;

use super::{CliError, CliResult};

/// How positions are grown.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMethod {
    /// Grow where |dense gradient| is largest.
    Rigl,
    /// Grow at seeded random positions (reproducible from --seed, --step).
    Set,
}

#[derive(Args, Debug)]
pub struct MaskUpdateArgs {
    /// Weights of the layer: float32 .npy, 1-D or 2-D (row-major; ties go to the lower flat
    /// index).
    #[arg(long, value_name = "W.npy")]
    weights: PathBuf,
    /// Dense gradient dL/d(mask*w), float32 .npy of the same shape: the grow score of rigl.
    /// Required by rigl; checked but unused by set.
    #[arg(long, value_name = "G.npy")]
    grads: Option<PathBuf>,
    /// Current mask, same shape: bool, uint8, float32 or float64 holding only 0 and 1.
    #[arg(long, value_name = "M.npy")]
    mask: PathBuf,
    /// Fraction of the active weights to drop (and grow back elsewhere), in [0, 1].
    #[arg(long, allow_negative_numbers = true, value_name = "F")]
    drop_fraction: f64,
    /// Output .npz with `mask` (uint8) and `weights` (float32, new connections zeroed); written
    /// atomically, only on success.
    #[arg(long, value_name = "OUT.npz")]
    out: PathBuf,
    /// Grow rule.
    #[arg(long, value_enum, default_value_t = UpdateMethod::Rigl)]
    method: UpdateMethod,
    /// Seed of set's random grow scores.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Training step of the update (part of set's random stream).
    #[arg(long, default_value_t = 0)]
    step: u32,
    /// Run the CPU reference instead of the GPU (identical output).
    #[arg(long)]
    cpu: bool,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
}

/// A bad input file: `PATH (--flag): problem`.
fn bad_file(path: &Path, flag: &str, problem: impl std::fmt::Display) -> CliError {
    CliError::usage(format!("{} ({flag}): {problem}", path.display()))
}

fn load(path: &Path, flag: &str) -> Result<NpyArray, CliError> {
    npy::read_npy(path).map_err(|e| match e {
        RiglError::Io { source, .. } => bad_file(path, flag, source),
        RiglError::BadFile { message, .. } => bad_file(path, flag, message),
        other => bad_file(path, flag, other),
    })
}

/// A float32 array's data, or an error naming the file.
fn f32_data(a: NpyArray, path: &Path, flag: &str) -> Result<Vec<f32>, CliError> {
    match a.data {
        NpyData::F32(v) => Ok(v),
        other => Err(bad_file(
            path,
            flag,
            format!(
                "dtype {} is not supported, expected float32 (<f4); convert with \
                 .astype(np.float32)",
                other.descr()
            ),
        )),
    }
}

/// The mask as f32 0/1, or an error naming the file and the first bad element.
fn mask_data(a: NpyArray, path: &Path) -> Result<Vec<f32>, CliError> {
    let cols = match a.shape[..] {
        [_, c] => Some(c),
        _ => None,
    };
    let bad_value = |i: usize, v: String| {
        let at = match cols {
            Some(c) if c > 0 => format!("[{}, {}]", i / c, i % c),
            _ => format!("[{i}]"),
        };
        bad_file(
            path,
            "--mask",
            format!("element {at} is {v}; a mask holds only 0 and 1"),
        )
    };
    match a.data {
        NpyData::Bool(v) => Ok(v.iter().map(|&b| f32::from(u8::from(b))).collect()),
        NpyData::U8(v) => v
            .iter()
            .enumerate()
            .map(|(i, &b)| match b {
                0 | 1 => Ok(f32::from(b)),
                _ => Err(bad_value(i, b.to_string())),
            })
            .collect(),
        NpyData::F32(v) => v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x == 0.0 || x == 1.0 {
                    Ok(x.abs())
                } else {
                    Err(bad_value(i, x.to_string()))
                }
            })
            .collect(),
        NpyData::F64(v) => v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x == 0.0 || x == 1.0 {
                    Ok(x.abs() as f32)
                } else {
                    Err(bad_value(i, x.to_string()))
                }
            })
            .collect(),
        other => Err(bad_file(
            path,
            "--mask",
            format!(
                "dtype {} is not supported, expected bool, uint8, float32 or float64; convert \
                 with .astype(np.uint8)",
                other.descr()
            ),
        )),
    }
}

/// What one update did, from the masks before and after.
struct Summary {
    n: usize,
    active: usize,
    dropped: usize,
    grown_new: usize,
    regrown: usize,
}

fn summarise(before: &[f32], after: &[f32], counts: LayerCounts) -> Summary {
    let both = before
        .iter()
        .zip(after)
        .filter(|&(&b, &a)| b == 1.0 && a == 1.0)
        .count();
    let now = after.iter().filter(|&&a| a == 1.0).count();
    Summary {
        n: before.len(),
        active: now,
        dropped: counts.k_grow,
        grown_new: now - both,
        regrown: both.saturating_sub(counts.k_keep),
    }
}

pub fn run(args: MaskUpdateArgs) -> CliResult {
    let df = args.drop_fraction;
    if !(0.0..=1.0).contains(&df) {
        return Err(CliError::usage(format!(
            "--drop-fraction must be in [0, 1], got {df}"
        )));
    }
    if args.method == UpdateMethod::Rigl && args.grads.is_none() {
        return Err(CliError::usage(
            "--grads G.npy is required with --method rigl (the grow score)",
        ));
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(CliError::usage(format!(
                "{} (--out): directory {} does not exist",
                args.out.display(),
                dir.display()
            )));
        }
    }

    // Read everything first, so that each problem names its file.
    let w_arr = load(&args.weights, "--weights")?;
    let g_arr = match &args.grads {
        Some(p) => Some((load(p, "--grads")?, p)),
        None => None,
    };
    let m_arr = load(&args.mask, "--mask")?;

    let shape = w_arr.shape.clone();
    if shape.is_empty() || shape.len() > 2 {
        return Err(bad_file(
            &args.weights,
            "--weights",
            format!(
                "a {}-D array of shape {}; expected 1-D or 2-D",
                shape.len(),
                rigl::npy::shape_string(&shape)
            ),
        ));
    }
    if w_arr.data.is_empty() {
        return Err(bad_file(
            &args.weights,
            "--weights",
            format!("shape {} has no elements", rigl::npy::shape_string(&shape)),
        ));
    }
    let same_shape = |a: &NpyArray, path: &Path, flag: &str| -> Result<(), CliError> {
        if a.shape != shape {
            return Err(bad_file(
                path,
                flag,
                format!(
                    "shape {} does not match the weights' {} ({})",
                    rigl::npy::shape_string(&a.shape),
                    rigl::npy::shape_string(&shape),
                    args.weights.display()
                ),
            ));
        }
        Ok(())
    };
    if let Some((g, p)) = &g_arr {
        same_shape(g, p, "--grads")?;
    }
    same_shape(&m_arr, &args.mask, "--mask")?;
    let w = f32_data(w_arr, &args.weights, "--weights")?;
    let g = match g_arr {
        Some((g, p)) => Some(f32_data(g, p, "--grads")?),
        None => None,
    };
    let mask = mask_data(m_arr, &args.mask)?;

    let n_active = mask.iter().filter(|&&m| m == 1.0).count();
    let f = df as f32;
    let n_drop = drop_count(n_active, f);
    let counts = LayerCounts {
        k_keep: n_active - n_drop,
        k_grow: n_drop,
    };
    let (new_w, new_mask, device) = if args.cpu {
        let (mut w2, mut m2) = (w.clone(), mask.clone());
        let mut slots: Vec<&mut [f32]> = Vec::new();
        match args.method {
            UpdateMethod::Rigl => {
                let g = g
                    .as_deref()
                    .ok_or_else(|| CliError::usage("--grads is required with --method rigl"))?;
                rigl_update(&mut w2, &mut slots, &mut m2, g, f)?
            }
            UpdateMethod::Set => {
                set_update(&mut w2, &mut slots, &mut m2, args.seed, args.step, 0, f)?
            }
        };
        (w2, m2, "CPU".to_string())
    } else {
        let ctx = GpuContext::new()?;
        let n = w.len();
        let tw = Tensor::from_f32(&ctx, "weights", &w)?;
        let tk = Tensor::from_f32(&ctx, "mask", &mask)?;
        // The momentum slot is not an input here: a scratch buffer the update zeroes in place.
        let tm = Tensor::zeros(&ctx, "momentum (scratch)", n)?;
        let ts = match &g {
            Some(g) => Tensor::from_f32(&ctx, "grads", g)?,
            None => Tensor::zeros(&ctx, "grow score (unused by set)", n)?,
        };
        let place = vec![LayerPlacement {
            name: args.weights.display().to_string(),
            offset: 0,
            n,
            id: 0,
        }];
        let up = MaskUpdater::new(&ctx, place, &tw, &tk, &tm, &ts, args.seed)?;
        let rule = match args.method {
            UpdateMethod::Rigl => GrowRule::Score,
            UpdateMethod::Set => GrowRule::Random,
        };
        up.run(&ctx, args.step, &[counts], rule)?;
        (
            tw.read_f32(&ctx)?,
            tk.read_f32(&ctx)?,
            ctx.info.name.clone(),
        )
    };

    let mask_u8: Vec<u8> = new_mask.iter().map(|&m| u8::from(m == 1.0)).collect();
    npy::write_npz(
        &args.out,
        &[
            (
                "mask",
                NpyView {
                    shape: &shape,
                    data: NpyDataRef::U8(&mask_u8),
                },
            ),
            (
                "weights",
                NpyView {
                    shape: &shape,
                    data: NpyDataRef::F32(&new_w),
                },
            ),
        ],
    )?;
    if !args.quiet {
        let s = summarise(&mask, &new_mask, counts);
        println!(
            "{} update of {} weights on {device}: {} active, dropped {} (fraction {df}), grew {} \
             new and {} regrown -> {}",
            match args.method {
                UpdateMethod::Rigl => "rigl",
                UpdateMethod::Set => "set",
            },
            s.n,
            s.active,
            s.dropped,
            s.grown_new,
            s.regrown,
            args.out.display()
        );
    }
    Ok(())
}
