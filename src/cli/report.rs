//! `rigl report`: puts runs side by side. Runs of one (method, sparsity) form a group; the figure
//! draws each group's mean over its runs (seeds) as a line and their min..max as a band, for the
//! training loss and test accuracy against steps and for test accuracy against training FLOPs.
//! A Markdown table lists the groups and then the runs.
//!
//! `--out NAME.svg` writes SVG; `--out NAME.png` writes PNG and `NAME.svg` beside it. The PNG's text
//! is drawn with DejaVu Sans compiled into the binary (the `dejavu` crate), so it needs no system
//! font.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::register_font;
use rigl::sparse::init::count_active;
use rigl::sparse::Method;
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
    /// Where to write the plot: `NAME.svg` writes SVG, `NAME.png` writes PNG and `NAME.svg`
    /// beside it.
    #[arg(long, default_value = "report.svg")]
    out: PathBuf,
}

/// One run as the report reads it.
struct Run {
    label: String,
    /// Method name (`rigl`, `dense`, ...).
    method: String,
    /// Target sparsity of the run; 0 for dense.
    sparsity: f64,
    seed: u64,
    summary: serde_json::Value,
    /// (step, loss) of training lines.
    train: Vec<(u64, f64)>,
    /// (step, test accuracy in [0, 1], training FLOPs so far as a multiple of one dense run) of
    /// evaluation lines.
    eval: Vec<(u64, f64, f64)>,
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
    let max_step = ckpt.as_ref().map_or(u64::MAX, |c| c.trainer.step);
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
    let metrics_path = dir.join("metrics.jsonl");
    let mut train = Vec::new();
    // (step, accuracy, training FLOPs so far as a multiple of dense over the same steps)
    let mut eval_lines = Vec::new();
    for (i, line) in read("metrics.jsonl")?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            CliError::usage(format!("{} line {}: {e}", metrics_path.display(), i + 1))
        })?;
        let kind = v["kind"].as_str();
        if !matches!(kind, Some("train" | "eval")) {
            continue;
        }
        let step = v["step"].as_u64().ok_or_else(|| {
            CliError::usage(format!(
                "{} line {}: no step (a whole number)",
                metrics_path.display(),
                i + 1
            ))
        })?;
        if step > max_step {
            continue;
        }
        // A missing number (a skipped window's loss is written as null) is NaN: left out of
        // the means and bands.
        let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        if kind == Some("train") {
            train.push((step, num("loss")));
        } else {
            eval_lines.push((step, num("accuracy"), num("train_flops_vs_dense")));
        }
    }
    // One dense run trains as many steps as this run at 3 dense forward passes a step, so the
    // training FLOPs so far, as a multiple of one dense run, are the ratio to dense over the
    // same steps scaled by the share of the run's steps done.
    let total_steps = match &ckpt {
        Some(ck) => ck.trainer.total_steps,
        None => summary["steps"].as_u64().unwrap_or(0),
    }
    .max(eval_lines.iter().map(|e| e.0).max().unwrap_or(0))
    .max(1);
    let eval = eval_lines
        .into_iter()
        .map(|(step, acc, ratio)| (step, acc, ratio * step as f64 / total_steps as f64))
        .collect();
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
        method: cfg.method.as_str().to_string(),
        sparsity: if cfg.method == Method::Dense {
            0.0
        } else {
            cfg.sparsity
        },
        seed: cfg.seed,
        summary,
        train,
        eval,
    })
}

/// Mean, min and max over a group's runs at one x.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    x: f64,
    mean: f64,
    min: f64,
    max: f64,
}

/// Per step that every series has: the mean, min and max of the series' finite values there
/// (steps where none is finite are left out). A series with a step twice (a resumed run) counts
/// its last value.
fn aggregate(series: &[Vec<(u64, f64)>]) -> Vec<(u64, Point)> {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for s in series {
        let last: BTreeMap<u64, f64> = s.iter().copied().collect();
        for (step, v) in last {
            at.entry(step).or_default().push(v);
        }
    }
    at.into_iter()
        .filter(|(_, vs)| vs.len() == series.len())
        .filter_map(|(step, vs)| {
            let finite: Vec<f64> = vs.into_iter().filter(|v| v.is_finite()).collect();
            if finite.is_empty() {
                return None;
            }
            let mean = finite.iter().sum::<f64>() / finite.len() as f64;
            let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
            let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((
                step,
                Point {
                    x: step as f64,
                    mean,
                    min,
                    max,
                },
            ))
        })
        .collect()
}

/// Methods in the order of the legend and the table, each with its colour (Okabe & Ito's
/// colour-blind-safe palette); other names come after them, in blue.
const METHODS: [(&str, RGBColor); 6] = [
    ("dense", RGBColor(0, 0, 0)),
    ("static", RGBColor(0xE6, 0x9F, 0x00)),
    ("set", RGBColor(0x56, 0xB4, 0xE9)),
    ("snfs", RGBColor(0x00, 0x9E, 0x73)),
    ("rigl", RGBColor(0xD5, 0x5E, 0x00)),
    ("prune", RGBColor(0xCC, 0x79, 0xA7)),
];
const OTHER_COLOR: RGBColor = RGBColor(0x00, 0x72, 0xB2);

fn method_rank(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| m.0 == method)
        .unwrap_or(METHODS.len())
}

fn method_color(method: &str) -> RGBColor {
    METHODS
        .iter()
        .find(|m| m.0 == method)
        .map_or(OTHER_COLOR, |m| m.1)
}

/// Sparsity as a whole number of parts per million: the grouping key.
fn sparsity_key(s: f64) -> i64 {
    (s * 1e6).round() as i64
}

/// `90%`, `98%`, `99.5%`.
fn percent(s: f64) -> String {
    format!("{}%", (s * 1000.0).round() / 10.0)
}

/// Runs of one method at one sparsity (their seeds).
struct Group {
    method: String,
    sparsity: f64,
    /// Indexes into the runs.
    runs: Vec<usize>,
    /// Training loss against step.
    loss: Vec<Point>,
    /// Test accuracy (%) against step.
    acc: Vec<Point>,
    /// Test accuracy (%) against training FLOPs (multiples of one dense run; the mean over the
    /// runs at each step).
    acc_flops: Vec<Point>,
}

impl Group {
    fn name(&self) -> String {
        if self.method == "dense" {
            "dense".to_string()
        } else {
            format!("{} {}", self.method, percent(self.sparsity))
        }
    }
}

/// Groups runs by (method, sparsity), in the order of [`METHODS`] and then of sparsity, with the
/// mean, min and max over each group's runs at the steps common to all of them.
fn group(runs: &[Run]) -> Vec<Group> {
    let mut by_key: BTreeMap<(usize, String, i64), Vec<usize>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        by_key
            .entry((
                method_rank(&r.method),
                r.method.clone(),
                sparsity_key(r.sparsity),
            ))
            .or_default()
            .push(i);
    }
    by_key
        .into_values()
        .map(|idx| {
            let members: Vec<&Run> = idx.iter().map(|&i| &runs[i]).collect();
            let loss: Vec<Vec<(u64, f64)>> = members.iter().map(|r| r.train.clone()).collect();
            let acc: Vec<Vec<(u64, f64)>> = members
                .iter()
                .map(|r| r.eval.iter().map(|e| (e.0, 100.0 * e.1)).collect())
                .collect();
            let flops: Vec<Vec<(u64, f64)>> = members
                .iter()
                .map(|r| r.eval.iter().map(|e| (e.0, e.2)).collect())
                .collect();
            let acc = aggregate(&acc);
            let flops: BTreeMap<u64, f64> = aggregate(&flops)
                .into_iter()
                .map(|(s, p)| (s, p.mean))
                .collect();
            let acc_flops = acc
                .iter()
                .filter_map(|(s, p)| {
                    flops
                        .get(s)
                        .filter(|x| **x > 0.0)
                        .map(|&x| Point { x, ..*p })
                })
                .collect();
            Group {
                method: members[0].method.clone(),
                sparsity: members[0].sparsity,
                loss: aggregate(&loss).into_iter().map(|(_, p)| p).collect(),
                acc: acc.into_iter().map(|(_, p)| p).collect(),
                acc_flops,
                runs: idx,
            }
        })
        .collect()
}

/// How a line is drawn: solid, or dashes of (dash, gap) pixels.
type Dash = Option<(i32, i32)>;

/// Line styles by sparsity rank: solid for the lowest sparsity, then dashed, dotted, long dashes.
const DASHES: [Dash; 4] = [None, Some((12, 6)), Some((3, 4)), Some((24, 5))];

/// Everything the figure shows, computed once for both backends.
struct Figure {
    groups: Vec<Group>,
    /// Per group: colour and dash.
    styles: Vec<(RGBColor, Dash)>,
    max_step: f64,
    loss_range: (f64, f64),
    /// The loss above which the axis was cut (values above are drawn at the top edge).
    loss_cut: Option<f64>,
    acc_range: (f64, f64),
    flops_range: (f64, f64),
    notes: Vec<String>,
}

fn percentile(vals: &[f64], q: f64) -> f64 {
    let mut v = vals.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn finite_range(vals: &[f64]) -> Option<(f64, f64)> {
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
}

impl Figure {
    fn new(runs: &[Run]) -> Figure {
        let groups = group(runs);
        // Line style by sparsity rank among the sparse groups; dense is solid (it has its colour).
        let mut sparsities: Vec<i64> = groups
            .iter()
            .filter(|g| g.method != "dense")
            .map(|g| sparsity_key(g.sparsity))
            .collect();
        sparsities.sort_unstable();
        sparsities.dedup();
        let styles = groups
            .iter()
            .map(|g| {
                let rank = sparsities
                    .iter()
                    .position(|&s| s == sparsity_key(g.sparsity))
                    .filter(|_| g.method != "dense")
                    .unwrap_or(0);
                (method_color(&g.method), DASHES[rank % DASHES.len()])
            })
            .collect();

        let all = |f: &dyn Fn(&Group) -> &[Point], pick: &dyn Fn(&Point) -> [f64; 2]| {
            groups
                .iter()
                .flat_map(|g| f(g).iter().flat_map(pick))
                .filter(|v| v.is_finite())
                .collect::<Vec<f64>>()
        };
        let max_step = all(&|g| &g.loss, &|p| [p.x, p.x])
            .into_iter()
            .chain(all(&|g| &g.acc, &|p| [p.x, p.x]))
            .fold(1.0, f64::max);

        // Loss on a log axis: from the lowest band point to the highest, but a spike more than
        // 3x above the 99th percentile of the band tops does not stretch the axis: it is cut
        // there, and the cut is said in the legend.
        let mut notes = Vec::new();
        let lows: Vec<f64> = all(&|g| &g.loss, &|p| [p.min, p.min])
            .into_iter()
            .filter(|v| *v > 0.0)
            .collect();
        let highs: Vec<f64> = all(&|g| &g.loss, &|p| [p.max, p.max])
            .into_iter()
            .filter(|v| *v > 0.0)
            .collect();
        let (loss_range, loss_cut) = match (finite_range(&lows), finite_range(&highs)) {
            (Some((lo, _)), Some((_, hi))) => {
                let cap = 3.0 * percentile(&highs, 0.99);
                let cut = (hi > cap).then_some(cap);
                if let Some(c) = cut {
                    notes.push(format!(
                        "loss axis cut at {} (3x its 99th percentile): values above,",
                        sig(c)
                    ));
                    notes.push(format!("up to {}, are drawn at the top edge", sig(hi)));
                }
                let top = hi.min(cap);
                let (lo, top) = if top / lo < 1.5 {
                    (lo / 1.25, top * 1.25)
                } else {
                    (lo / 1.1, top * 1.1)
                };
                ((lo, top), cut)
            }
            _ => ((0.1, 10.0), None),
        };

        // Accuracy: the data's range, padded, so that close runs stay apart.
        let accs = all(&|g| &g.acc, &|p| [p.min, p.max]);
        let acc_range = finite_range(&accs).map_or((0.0, 100.0), |(lo, hi)| {
            let pad = ((hi - lo) * 0.06).max(0.5);
            ((lo - pad).max(0.0), (hi + pad).min(100.0))
        });
        let xs: Vec<f64> = all(&|g| &g.acc_flops, &|p| [p.x, p.x])
            .into_iter()
            .filter(|v| *v > 0.0)
            .collect();
        let flops_range = finite_range(&xs).map_or((0.01, 1.0), |(lo, hi)| {
            if hi / lo < 3.0 {
                (lo / 1.5, hi * 1.5)
            } else {
                (lo / 1.2, hi * 1.2)
            }
        });

        let counts: Vec<usize> = groups.iter().map(|g| g.runs.len()).collect();
        let band = match (counts.iter().min(), counts.iter().max()) {
            (Some(a), Some(b)) if a == b && *a == 1 => {
                "one run a group: lines are runs, no bands".to_string()
            }
            (Some(a), Some(b)) if a == b => {
                format!("line: mean over {a} seeds; band: min–max over them")
            }
            _ => "line: mean over a group's n seeds; band: min–max over them".to_string(),
        };
        notes.insert(0, band);
        notes.insert(
            1,
            "a group's seeds are aligned by step (the steps common to all)".into(),
        );
        notes.insert(
            2,
            "FLOPs: training FLOPs so far / one dense run's (same steps)".into(),
        );
        Figure {
            groups,
            styles,
            max_step,
            loss_range,
            loss_cut,
            acc_range,
            flops_range,
            notes,
        }
    }

    /// Whether the groups have different numbers of runs (the legend then gives each one's).
    fn uneven(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.runs.len() != self.groups[0].runs.len())
    }
}

/// A number with up to 3 significant digits, without trailing zeros: `0.05`, `2.5`, `40`.
fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Ticks of a log axis from `lo` to `hi`: powers of ten, with 2 and 5 (or every digit) between
/// them when the axis spans few decades; and the light grid lines (every digit).
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi / lo).log10();
    let mults: &[f64] = if decades > 3.0 {
        &[1.0]
    } else if decades > 1.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    };
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mut bold = Vec::new();
    let mut light = Vec::new();
    for k in k0..=k1 {
        for m in 1..10 {
            // Dividing by an exact power of ten rounds 0.01 to the literal 0.01.
            let v = if k < 0 {
                m as f64 / 10f64.powi(-k)
            } else {
                m as f64 * 10f64.powi(k)
            };
            if v < lo || v > hi {
                continue;
            }
            if mults.contains(&(m as f64)) {
                bold.push(v);
            } else {
                light.push(v);
            }
        }
    }
    (bold, light)
}

const FONT: &str = "sans-serif";
/// Pixels of the figure.
const SIZE: (u32, u32) = (1600, 1200);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

struct Axes<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x_fmt: &'a dyn Fn(&f64) -> String,
    y_fmt: &'a dyn Fn(&f64) -> String,
    /// Values outside are drawn at the edge.
    y_clamp: (f64, f64),
}

fn panel<DB, XS, YS>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    axes: &Axes<'_>,
    xs: XS,
    ys: YS,
    points: fn(&Group) -> &[Point],
) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    XS: AsRangedCoord<Value = f64>,
    YS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    YS::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(axes.title, (FONT, 24))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(76)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.05))
        .max_light_lines(1)
        .x_label_formatter(axes.x_fmt)
        .y_label_formatter(axes.y_fmt)
        .draw()?;
    let (lo, hi) = axes.y_clamp;
    let y = |v: f64| v.clamp(lo, hi);
    // Bands first, all of them, so that no band hides another group's line.
    for (g, (color, _)) in fig.groups.iter().zip(&fig.styles) {
        let pts = points(g);
        if g.runs.len() < 2 || pts.len() < 2 {
            continue;
        }
        let outline: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (p.x, y(p.max)))
            .chain(pts.iter().rev().map(|p| (p.x, y(p.min))))
            .collect();
        chart.draw_series(std::iter::once(Polygon::new(
            outline,
            color.mix(0.14).filled(),
        )))?;
    }
    for (g, (color, dash)) in fig.groups.iter().zip(&fig.styles) {
        let line: Vec<(f64, f64)> = points(g).iter().map(|p| (p.x, y(p.mean))).collect();
        let style = color.stroke_width(2);
        if line.len() == 1 {
            chart.draw_series(std::iter::once(Circle::new(line[0], 3, color.filled())))?;
        } else {
            match dash {
                None => chart.draw_series(std::iter::once(PathElement::new(line, style)))?,
                Some((d, gap)) => chart.draw_series(std::iter::once(DashedPathElement::new(
                    line, *d, *gap, style,
                )))?,
            };
        }
    }
    Ok(())
}

fn legend<DB>(area: &DrawingArea<DB, Shift>, fig: &Figure, runs: usize) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let text = |s: &str, x: i32, y: i32, size: i32| -> DrawResult {
        area.draw(&Text::new(
            s.to_string(),
            (x, y),
            (FONT, size).into_font().color(&BLACK),
        ))?;
        Ok(())
    };
    let left = 40;
    text(
        &format!("{} runs in {} groups", runs, fig.groups.len()),
        left,
        24,
        24,
    )?;
    text("colour: method, line style: sparsity", left, 62, 18)?;
    let top = 100;
    let row = 30;
    let note_row = 26;
    let notes_h = note_row * fig.notes.len() as i32 + 16;
    // Entries in one column while they fit above the notes, else in more.
    let rows = ((h - top - notes_h) / row).max(1) as usize;
    let col_w = (w - left) / fig.groups.len().div_ceil(rows).max(1) as i32;
    let uneven = fig.uneven();
    for (i, (g, (color, dash))) in fig.groups.iter().zip(&fig.styles).enumerate() {
        let x = left + (i / rows) as i32 * col_w;
        let y = top + (i % rows) as i32 * row + row / 2;
        area.draw(&Rectangle::new(
            [(x, y - 8), (x + 56, y + 8)],
            color.mix(0.14).filled(),
        ))?;
        let line = vec![(x, y), (x + 56, y)];
        let style = color.stroke_width(2);
        match dash {
            None => area.draw(&PathElement::new(line, style))?,
            Some((d, gap)) => area.draw(&DashedPathElement::new(line, *d, *gap, style))?,
        }
        let mut name = g.name();
        if uneven {
            name.push_str(&format!(" (n={})", g.runs.len()));
        }
        text(&name, x + 70, y - 10, 20)?;
    }
    let mut y = top + (fig.groups.len().min(rows) as i32) * row + 16;
    for n in &fig.notes {
        text(n, left, y, 17)?;
        y += note_row;
    }
    Ok(())
}

fn draw<DB>(root: DrawingArea<DB, Shift>, fig: &Figure, runs: usize) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let areas = root.split_evenly((2, 2));
    let steps = |v: &f64| format!("{v:.0}");
    let num = |v: &f64| sig(*v);
    let pct = |v: &f64| sig(*v);
    let times = |v: &f64| format!("{}x", sig(*v));
    let (l0, l1) = fig.loss_range;
    let (bold, light) = log_ticks(l0, l1);
    let loss_title = if fig.loss_cut.is_some() {
        "training loss vs step (log scale, cut: see notes)"
    } else {
        "training loss vs step (log scale)"
    };
    panel(
        &areas[0],
        fig,
        &Axes {
            title: loss_title,
            x_desc: "step",
            y_desc: "training loss (cross-entropy)",
            x_fmt: &steps,
            y_fmt: &num,
            y_clamp: fig.loss_range,
        },
        0.0..fig.max_step,
        (l0..l1)
            .log_scale()
            .with_key_points(bold)
            .with_light_points(light),
        |g| &g.loss,
    )?;
    let (a0, a1) = fig.acc_range;
    panel(
        &areas[1],
        fig,
        &Axes {
            title: "test accuracy vs step",
            x_desc: "step",
            y_desc: "test accuracy (%)",
            x_fmt: &steps,
            y_fmt: &pct,
            y_clamp: fig.acc_range,
        },
        0.0..fig.max_step,
        a0..a1,
        |g| &g.acc,
    )?;
    let (f0, f1) = fig.flops_range;
    let (bold, light) = log_ticks(f0, f1);
    panel(
        &areas[2],
        fig,
        &Axes {
            title: "test accuracy vs training FLOPs (log scale)",
            x_desc: "training FLOPs (multiples of one dense run)",
            y_desc: "test accuracy (%)",
            x_fmt: &times,
            y_fmt: &pct,
            y_clamp: fig.acc_range,
        },
        (f0..f1)
            .log_scale()
            .with_key_points(bold)
            .with_light_points(light),
        a0..a1,
        |g| &g.acc_flops,
    )?;
    legend(&areas[3], fig, runs)?;
    root.present()?;
    Ok(())
}

/// DejaVu Sans for all the figure's text (one weight, the only one it uses): its metrics lay out
/// the SVG's text, and it draws the PNG's.
fn register_fonts() -> DrawResult {
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the built-in DejaVu Sans font does not parse")?;
    Ok(())
}

fn write_svg(fig: &Figure, runs: usize, path: &Path) -> DrawResult {
    draw(SVGBackend::new(path, SIZE).into_drawing_area(), fig, runs)
}

/// The figure as an RGB image, `SIZE` pixels.
fn render_rgb(fig: &Figure, runs: usize) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut buf = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    draw(
        BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area(),
        fig,
        runs,
    )?;
    Ok(buf)
}

fn write_png(fig: &Figure, runs: usize, path: &Path) -> DrawResult {
    let rgb = render_rgb(fig, runs)?;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, SIZE.0, SIZE.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&rgb)?;
    w.finish()?;
    Ok(())
}

/// The files `--out` names: (SVG, PNG if any).
fn outputs(out: &Path) -> (PathBuf, Option<PathBuf>) {
    let png = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if png {
        (out.with_extension("svg"), Some(out.to_path_buf()))
    } else {
        (out.to_path_buf(), None)
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

fn print_groups(runs: &[Run], groups: &[Group]) {
    println!("| group | runs | seeds | density | test acc (mean ± sd) | test acc (min–max) | final train loss | train FLOPs | inference FLOPs | ITOP | samples/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for g in groups {
        let members: Vec<&Run> = g.runs.iter().map(|&i| &runs[i]).collect();
        let vals = |k: &str| -> Vec<f64> {
            members
                .iter()
                .map(|r| r.summary[k].as_f64().unwrap_or(f64::NAN))
                .collect()
        };
        let mean = |k: &str| mean_sd(&vals(k)).0;
        let acc: Vec<f64> = vals("test_accuracy").iter().map(|a| 100.0 * a).collect();
        let (m, sd) = mean_sd(&acc);
        let (lo, hi) = finite_range(&acc).unwrap_or((f64::NAN, f64::NAN));
        let seeds: Vec<String> = members.iter().map(|r| r.seed.to_string()).collect();
        println!(
            "| {} | {} | {} | {:.3} | {:.2}% ± {:.2} | {:.2}–{:.2}% | {:.4} | {:.3}x | {:.3}x | {:.3} | {:.0} |",
            g.name(),
            members.len(),
            seeds.join(", "),
            mean("density"),
            m,
            sd,
            lo,
            hi,
            mean("final_train_loss"),
            mean("train_flops_vs_dense"),
            mean("inference_flops_vs_dense"),
            mean("itop_rate"),
            mean("samples_per_sec"),
        );
    }
}

fn print_runs(runs: &[Run]) {
    println!("| run | method | density | test acc | final train loss | train FLOPs | inference FLOPs | ITOP | samples/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
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
}

pub fn run(args: ReportArgs) -> CliResult {
    let runs = args
        .runs
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>, _>>()?;
    let fig = Figure::new(&runs);
    register_fonts().map_err(|e| CliError::from(anyhow::anyhow!("{e}")))?;
    let (svg, png) = outputs(&args.out);
    let fail = |p: &Path, e: Box<dyn std::error::Error>| {
        CliError::from(anyhow::anyhow!("{}: {e}", p.display()))
    };
    write_svg(&fig, runs.len(), &svg).map_err(|e| fail(&svg, e))?;
    if let Some(png) = &png {
        write_png(&fig, runs.len(), png).map_err(|e| fail(png, e))?;
    }
    print_groups(&runs, &fig.groups);
    println!();
    print_runs(&runs);
    match png {
        Some(png) => eprintln!("plot written to {} and {}", png.display(), svg.display()),
        None => eprintln!("plot written to {}", svg.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished run with the given train (step, loss; None is null) and eval (step,
    /// accuracy, FLOPs vs dense over the same steps) lines.
    fn write_run(
        dir: &Path,
        config: &str,
        steps: u64,
        train: &[(u64, Option<f64>)],
        eval: &[(u64, f64, f64)],
    ) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let summary = serde_json::json!({ "method": "x", "steps": steps, "test_accuracy": 0.5 });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        let mut m = String::new();
        for (step, loss) in train {
            let loss = serde_json::json!(loss);
            m += &format!("{{\"kind\":\"train\",\"step\":{step},\"loss\":{loss}}}\n");
        }
        for (step, acc, flops) in eval {
            m += &format!(
                "{{\"kind\":\"eval\",\"step\":{step},\"accuracy\":{acc},\"train_flops_vs_dense\":{flops}}}\n"
            );
        }
        std::fs::write(dir.join("metrics.jsonl"), m).unwrap();
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn groups_by_method_and_sparsity_with_mean_min_max() {
        let root = tempfile::tempdir().unwrap();
        let rigl = |seed: u64| format!("method = \"rigl\"\nsparsity = 0.9\nseed = {seed}\n");
        let d = |n: &str| root.path().join(n);
        // Three rigl 90% seeds; the third has a step more (20 of 30), left out of the group.
        write_run(
            &d("r0"),
            &rigl(0),
            20,
            &[(10, Some(1.0)), (20, Some(0.5))],
            &[(10, 0.6, 0.2), (20, 0.8, 0.1)],
        );
        write_run(
            &d("r1"),
            &rigl(1),
            20,
            &[(10, Some(2.0)), (20, None)],
            &[(10, 0.7, 0.2), (20, 0.9, 0.1)],
        );
        write_run(
            &d("r2"),
            &rigl(2),
            30,
            &[(10, Some(4.0)), (20, Some(0.25)), (30, Some(0.1))],
            &[(10, 0.5, 0.3), (20, 0.7, 0.15), (30, 0.75, 0.1)],
        );
        // Dense, whose config says sparsity 0.9: no sparsity.
        write_run(
            &d("dense"),
            "method = \"dense\"\nsparsity = 0.9\nseed = 0\n",
            20,
            &[(10, Some(3.0)), (20, Some(1.0))],
            &[(20, 0.85, 1.0)],
        );
        // rigl at 98%: a group of its own.
        write_run(
            &d("r98"),
            "method = \"rigl\"\nsparsity = 0.98\nseed = 0\n",
            20,
            &[(10, Some(3.0))],
            &[(20, 0.5, 0.02)],
        );
        let runs: Vec<Run> = ["r0", "dense", "r98", "r1", "r2"]
            .iter()
            .map(|n| load(&d(n)).unwrap())
            .collect();
        let groups = group(&runs);
        let names: Vec<String> = groups.iter().map(Group::name).collect();
        assert_eq!(names, ["dense", "rigl 90%", "rigl 98%"]);
        assert_eq!(groups[0].sparsity, 0.0);
        assert_eq!(groups[1].runs, [0, 3, 4]);

        let g = &groups[1];
        // Loss: steps 10 and 20 (30 is not in every run); the null loss is left out of step 20.
        assert_eq!(g.loss.len(), 2);
        let p = g.loss[0];
        assert_eq!(p.x, 10.0);
        assert!(
            close(p.mean, 7.0 / 3.0) && p.min == 1.0 && p.max == 4.0,
            "{p:?}"
        );
        let p = g.loss[1];
        assert!(
            close(p.mean, 0.375) && p.min == 0.25 && p.max == 0.5,
            "{p:?}"
        );
        // Accuracy in %.
        assert_eq!(g.acc.len(), 2);
        let p = g.acc[1];
        assert_eq!(p.x, 20.0);
        assert!(
            close(p.mean, 80.0) && close(p.min, 70.0) && close(p.max, 90.0),
            "{p:?}"
        );
        // FLOPs as multiples of one dense run: the ratio over the steps done times the share of
        // the run's steps done; mean over the runs. Step 10: 0.2/2, 0.2/2, 0.3/3.
        assert!(close(g.acc_flops[0].x, 0.1), "{:?}", g.acc_flops);
        // Step 20: 0.1, 0.1, 0.15 * 2/3.
        assert!(close(g.acc_flops[1].x, 0.1), "{:?}", g.acc_flops);
        assert_eq!(g.acc_flops[1].mean, g.acc[1].mean);
        // Dense ends at one dense run.
        assert!(close(groups[0].acc_flops[0].x, 1.0));

        // Colour by method, line style by sparsity (dense solid in its own colour).
        let fig = Figure::new(&runs);
        assert_eq!(fig.styles[0], (METHODS[0].1, None));
        assert_eq!(fig.styles[1], (METHODS[4].1, DASHES[0]));
        assert_eq!(fig.styles[2], (METHODS[4].1, DASHES[1]));
        assert!(fig.loss_cut.is_none());
        assert!(
            fig.acc_range.0 >= 45.0 && fig.acc_range.1 <= 95.0,
            "{:?}",
            fig.acc_range
        );
    }

    #[test]
    fn a_loss_spike_cuts_the_axis() {
        let root = tempfile::tempdir().unwrap();
        let train: Vec<(u64, Option<f64>)> = (1..=200)
            .map(|s| (s, Some(if s == 100 { 40.0 } else { 1.0 / s as f64 })))
            .collect();
        write_run(
            root.path(),
            "method = \"set\"\n",
            200,
            &train,
            &[(200, 0.9, 0.1)],
        );
        let fig = Figure::new(&[load(root.path()).unwrap()]);
        let cut = fig.loss_cut.unwrap();
        assert!(
            cut < 40.0 && fig.loss_range.1 < 40.0,
            "{cut} {:?}",
            fig.loss_range
        );
        assert!(fig.loss_range.0 < 1.0 / 200.0);
        assert!(fig.notes.iter().any(|n| n.contains("cut")));
    }

    #[test]
    fn out_png_writes_svg_beside_it() {
        assert_eq!(
            outputs(Path::new("a/r.png")),
            (PathBuf::from("a/r.svg"), Some(PathBuf::from("a/r.png")))
        );
        assert_eq!(outputs(Path::new("a/r.PNG")).0, PathBuf::from("a/r.svg"));
        assert_eq!(outputs(Path::new("r.svg")), (PathBuf::from("r.svg"), None));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(sig(0.05), "0.05");
        assert_eq!(sig(1.0), "1");
        assert_eq!(sig(40.0), "40");
        assert_eq!(sig(2.5), "2.5");
        assert_eq!(sig(0.123456), "0.123");
        let (bold, _) = log_ticks(0.002, 3.0);
        assert_eq!(bold, [0.01, 0.1, 1.0]);
        let (bold, light) = log_ticks(0.05, 3.0);
        assert_eq!(bold, [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]);
        assert!(light.contains(&0.3));
    }
}
