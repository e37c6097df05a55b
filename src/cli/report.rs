//! `rigl report`: puts runs side by side — an SVG of loss and test accuracy against steps and
//! against training FLOPs, and a Markdown table.

use std::path::{Path, PathBuf};

use clap::Args;
use plotters::prelude::*;
use rigl::sparse::init::count_active;
use rigl::train::checkpoint::{self, Checkpoint};
use rigl::train::TrainConfig;

use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories (each with metrics.jsonl and summary.json; a stopped run without
    /// summary.json is summarised from its newest checkpoint), or checkpoint files (their run's
    /// metrics up to the checkpoint's step).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "report.svg")]
    out: PathBuf,
}

struct Run {
    label: String,
    summary: serde_json::Value,
    /// (step, loss) of training lines.
    train: Vec<(f64, f64)>,
    /// (step, accuracy, cumulative training FLOPs) of evaluation lines.
    eval: Vec<(f64, f64, f64)>,
}

/// A summary of a run that has none yet (it was stopped), from a checkpoint: the same keys as
/// `summary.json`, as of the checkpoint's step.
fn summary_of(ck: &Checkpoint) -> serde_json::Value {
    let t = &ck.trainer;
    let totals: Vec<usize> = ck.model.masks.iter().map(Vec::len).collect();
    let total: usize = totals.iter().sum();
    let active: usize = t.active.iter().sum();
    let ever: usize = ck.model.ever.iter().map(|e| count_active(e)).sum();
    let layers: Vec<serde_json::Value> = totals
        .iter()
        .zip(&t.active)
        .map(|(n, a)| serde_json::json!({ "total": n, "active": a }))
        .collect();
    serde_json::json!({
        "method": ck.config.method.as_str(),
        "density": active as f64 / total.max(1) as f64,
        "test_accuracy": t.last_eval_accuracy,
        "final_train_loss": t.final_train_loss,
        "train_flops_vs_dense": t.train_flops / t.dense_flops,
        "inference_flops_vs_dense": active as f64 / total.max(1) as f64,
        "itop_rate": ever as f64 / total.max(1) as f64,
        "samples_per_sec": (t.step * ck.config.batch as u64) as f64 / t.train_seconds,
        "steps": t.step,
        "layers": layers,
    })
}

fn load(arg: &Path) -> Result<Run, CliError> {
    // A checkpoint file: its run's metrics up to its step, summarised from it.
    let (dir, ckpt) = if arg.is_file() {
        let ck = checkpoint::read(arg).map_err(CliError::usage)?;
        (checkpoint::run_dir_of(arg), Some(ck))
    } else {
        (arg.to_path_buf(), None)
    };
    let dir = dir.as_path();
    let read = |name: &str| -> Result<String, CliError> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
    };
    let ckpt = match ckpt {
        Some(ck) => Some(ck),
        None if !dir.join("summary.json").is_file() => {
            let found = checkpoint::find(dir).map_err(|e| {
                CliError::usage(format!(
                    "{}: no summary.json, and no checkpoint to summarise ({e})",
                    dir.display()
                ))
            })?;
            Some(found.checkpoint)
        }
        None => None,
    };
    let max_step = ckpt
        .as_ref()
        .map_or(f64::INFINITY, |c| c.trainer.step as f64);
    let (summary, cfg) = match &ckpt {
        Some(ck) => (summary_of(ck), ck.config.clone()),
        None => {
            let summary: serde_json::Value =
                serde_json::from_str(&read("summary.json")?).map_err(|e| {
                    CliError::usage(format!("{}: {e}", dir.join("summary.json").display()))
                })?;
            let cfg: TrainConfig = toml::from_str(&read("config.toml")?).map_err(|e| {
                CliError::usage(format!("{}: {e}", dir.join("config.toml").display()))
            })?;
            (summary, cfg)
        }
    };
    // Dense training FLOPs of one step: 3 × forward, 2 FLOPs per multiply-add, per sample.
    let f_dense: f64 = summary["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["total"].as_f64()).sum::<f64>())
        .unwrap_or(0.0)
        * 2.0;
    let dense_step = 3.0 * f_dense * cfg.batch as f64;
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for (i, line) in read("metrics.jsonl")?.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            CliError::usage(format!(
                "{} line {}: {e}",
                dir.join("metrics.jsonl").display(),
                i + 1
            ))
        })?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        if step > max_step {
            continue;
        }
        match v["kind"].as_str() {
            Some("train") => train.push((step, v["loss"].as_f64().unwrap_or(f64::NAN))),
            Some("eval") => eval.push((
                step,
                v["accuracy"].as_f64().unwrap_or(f64::NAN),
                v["train_flops_vs_dense"].as_f64().unwrap_or(f64::NAN) * dense_step * step,
            )),
            _ => {}
        }
    }
    let mut label = format!(
        "{} {}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        summary["method"].as_str().unwrap_or("?")
    );
    if let Some(ck) = &ckpt {
        label.push_str(&format!(
            " (step {} of {})",
            ck.trainer.step, ck.trainer.total_steps
        ));
    }
    Ok(Run {
        label,
        summary,
        train,
        eval,
    })
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    (lo, hi)
}

type Series<'a> = Vec<(&'a str, Vec<(f64, f64)>)>;

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &Series<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (x0, x1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)));
    let (y0, y1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
    let pad = (y1 - y0) * 0.05;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| {
            if v.abs() >= 1e6 {
                format!("{v:.1e}")
            } else {
                format!("{v:.0}")
            }
        })
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

fn plot(runs: &[Run], out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(out, (1500, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, 3));
    let loss: Series = runs
        .iter()
        .map(|r| (r.label.as_str(), r.train.clone()))
        .collect();
    let acc: Series = runs
        .iter()
        .map(|r| {
            (
                r.label.as_str(),
                r.eval.iter().map(|e| (e.0, 100.0 * e.1)).collect(),
            )
        })
        .collect();
    let acc_flops: Series = runs
        .iter()
        .map(|r| {
            (
                r.label.as_str(),
                r.eval.iter().map(|e| (e.2, 100.0 * e.1)).collect(),
            )
        })
        .collect();
    panel(&areas[0], "training loss", "step", "loss", &loss)?;
    panel(&areas[1], "test accuracy", "step", "accuracy %", &acc)?;
    panel(
        &areas[2],
        "test accuracy vs training FLOPs",
        "training FLOPs",
        "accuracy %",
        &acc_flops,
    )?;
    root.present()?;
    Ok(())
}

pub fn run(args: ReportArgs) -> CliResult {
    let runs = args
        .runs
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>, _>>()?;
    plot(&runs, &args.out)
        .map_err(|e| CliError::from(anyhow::anyhow!("{}: {e}", args.out.display())))?;
    println!("| run | method | density | test acc | final train loss | train FLOPs | inference FLOPs | ITOP | samples/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let s = &r.summary;
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.3} | {:.2}% | {:.4} | {:.3}x | {:.3}x | {:.3} | {:.0} |",
            r.label,
            s["method"].as_str().unwrap_or("?"),
            f("density"),
            100.0 * f("test_accuracy"),
            f("final_train_loss"),
            f("train_flops_vs_dense"),
            f("inference_flops_vs_dense"),
            f("itop_rate"),
            f("samples_per_sec"),
        );
    }
    eprintln!("plot written to {}", args.out.display());
    Ok(())
}
