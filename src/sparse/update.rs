//! The mask update of every sparse layer of a model on the GPU (`shaders/select.wgsl`): exact
//! top-k drop by |w| among active weights, exact top-k grow among the rest, new connections and
//! their momentum zeroed. A fixed number of dispatches whatever the number of layers, and no
//! read-back of weights: the host writes only the per-layer counts.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::{GpuContext, Tensor};

/// Elements per selection chunk (must equal `CHUNK` in `select.wgsl`).
pub const CHUNK: usize = 256;
const LAYER_WORDS: usize = 8;
const HEADER: usize = 4;
const STATE_STRIDE: usize = 260;
/// Words per chunk of the digit set a histogram pass leaves for the next one.
const DIGIT_WORDS: usize = 8;

/// How the grow phase scores candidate positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowRule {
    /// By |score| (RigL: the dense gradient; SNFS: its EMA).
    Score,
    /// By the counter-based random score `set_score(seed, step, layer, index)` (SET).
    Random,
    /// No growth: drop only (gradual magnitude pruning).
    None,
}

/// Where one layer lives in the model's flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerPlacement {
    /// Layer name (for errors).
    pub name: String,
    /// First element in the flat buffers.
    pub offset: usize,
    /// Number of weights.
    pub n: usize,
    /// Layer index used by the SET random stream.
    pub id: u32,
}

/// Per-layer values of a saved state laid into one flat buffer of `total` elements at the
/// placements' offsets (the alignment padding between layers zero), every length checked
/// first: what a model's `load_state` writes to its flat weight, mask, momentum, EMA and
/// ever-active buffers. `what` names the tensor kind in errors.
pub fn flatten_layers(
    placements: &[LayerPlacement],
    total: usize,
    layers: &[Vec<f32>],
    what: &str,
) -> Result<Vec<f32>> {
    if layers.len() != placements.len() {
        return Err(RiglError::invalid(format!(
            "model state: {} {what} layers, the model has {}",
            layers.len(),
            placements.len()
        )));
    }
    let mut flat = vec![0.0f32; total];
    for (p, v) in placements.iter().zip(layers) {
        if v.len() != p.n {
            return Err(RiglError::invalid(format!(
                "model state: layer {} {what} has {} values, expected {}",
                p.name,
                v.len(),
                p.n
            )));
        }
        flat[p.offset..p.offset + p.n].copy_from_slice(v);
    }
    Ok(flat)
}

/// Per-layer counts of one update: keep `k_keep` of the active weights, grow `k_grow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LayerCounts {
    /// Active weights kept by the drop phase.
    pub k_keep: usize,
    /// Positions grown.
    pub k_grow: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SelParams {
    n_layers: u32,
    n_chunks: u32,
    total: u32,
    _pad: u32,
}

const BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

fn placeholders(ctx: &GpuContext) -> Result<[Tensor; 3]> {
    let t = || Tensor::zeros(ctx, "mask-update placeholder", 64);
    Ok([t()?, t()?, t()?])
}

fn check_len(t: &Tensor, total: usize, what: &str) -> Result<()> {
    if t.len < total {
        return Err(RiglError::invalid(format!(
            "mask update: {what} buffer '{}' has {} elements, the layers need {total}",
            t.label, t.len
        )));
    }
    Ok(())
}

/// The GPU mask updater of a model, built once: pipelines, bind groups and scratch buffers.
#[derive(Debug)]
pub struct MaskUpdater {
    layers: Vec<LayerPlacement>,
    chunk_map: Vec<u32>,
    meta: Tensor,
    scratch: Tensor,
    sel: Tensor,
    drop: Vec<Dispatch>,
    /// The drop phase's mark when the grow phase does it (masked models), for drop-only updates.
    drop_mark: Option<Dispatch>,
    grow_score: Vec<Dispatch>,
    grow_random: Vec<Dispatch>,
    apply_drop_only: Dispatch,
    seed: u32,
}

impl MaskUpdater {
    /// Builds the updater over flat buffers holding every layer at its placement. `mom` is the
    /// optimizer slot zeroed with new and dropped connections; `score` the grow score buffer (may
    /// be any buffer of the right size when only SET or pruning is used).
    pub fn new(
        ctx: &GpuContext,
        layers: Vec<LayerPlacement>,
        w: &Tensor,
        mask: &Tensor,
        mom: &Tensor,
        score: &Tensor,
        seed: u32,
    ) -> Result<Self> {
        let total = layers.iter().map(|l| l.offset + l.n).max().unwrap_or(0);
        for (t, what) in [
            (w, "weights"),
            (mask, "mask"),
            (mom, "momentum"),
            (score, "score"),
        ] {
            check_len(t, total, what)?;
        }
        Self::build(ctx, layers, [w, mask, mom, score], None, false, true, seed)
    }

    /// The drop phase only, over the compressed values of sparse layers laid out back to back
    /// (`layers` are slot ranges of `vals`; every slot is an active weight). After
    /// [`MaskUpdater::drop_dispatches`], bit 0 of [`MaskUpdater::selection`] marks the kept slots.
    pub fn for_compressed_drop(
        ctx: &GpuContext,
        layers: Vec<LayerPlacement>,
        vals: &Tensor,
        seed: u32,
    ) -> Result<Self> {
        let total = layers.iter().map(|l| l.offset + l.n).max().unwrap_or(0);
        check_len(vals, total, "values")?;
        // Bindings the drop phase never reads (one buffer each: wgpu forbids a buffer bound
        // both read-only and writable in one dispatch).
        let d = placeholders(ctx)?;
        Self::build(
            ctx,
            layers,
            [vals, &d[0], &d[1], &d[2]],
            None,
            true,
            false,
            seed,
        )
    }

    /// The grow phase only, over a dense score of one layer at offset 0 of `score`, with the
    /// caller's selection buffer `sel`: positions with bit 0 set in `sel` are not eligible, and
    /// the grown ones get bit 1 ([`MaskUpdater::grow_dispatches`]).
    pub fn for_dense_grow(
        ctx: &GpuContext,
        layer: LayerPlacement,
        score: &Tensor,
        sel: &Tensor,
        seed: u32,
    ) -> Result<Self> {
        let total = layer.offset + layer.n;
        check_len(score, total, "score")?;
        check_len(sel, total, "selection")?;
        let d = placeholders(ctx)?;
        Self::build(
            ctx,
            vec![layer],
            [&d[0], &d[1], &d[2], score],
            Some(sel),
            false,
            false,
            seed,
        )
    }

    fn build(
        ctx: &GpuContext,
        layers: Vec<LayerPlacement>,
        [w, mask, mom, score]: [&Tensor; 4],
        sel: Option<&Tensor>,
        all_eligible: bool,
        apply: bool,
        seed: u32,
    ) -> Result<Self> {
        if layers.is_empty() {
            return Err(RiglError::invalid("mask update needs at least one layer"));
        }
        let total = layers.iter().map(|l| l.offset + l.n).max().unwrap_or(0);
        let mut chunk_map = Vec::new();
        for (li, l) in layers.iter().enumerate() {
            if l.n > u32::MAX as usize / 2 {
                return Err(RiglError::invalid(format!("layer {} is too large", l.name)));
            }
            chunk_map.extend(std::iter::repeat_n(li as u32, l.n.div_ceil(CHUNK)));
        }
        let n_chunks = chunk_map.len();
        let meta_len = HEADER + layers.len() * LAYER_WORDS + n_chunks;
        let meta = Tensor::zeros(ctx, "mask-update layer table", meta_len)?;
        let scratch = Tensor::zeros(
            ctx,
            "mask-update scratch",
            layers.len() * (STATE_STRIDE + 1) + n_chunks * (1 + DIGIT_WORDS),
        )?;
        let sel = match sel {
            Some(t) => t.clone(),
            None => Tensor::zeros(ctx, "mask-update selection", total)?,
        };
        let params = SelParams {
            n_layers: layers.len() as u32,
            n_chunks: n_chunks as u32,
            total: total as u32,
            _pad: 0,
        };
        let bufs = [&meta, w, mask, mom, score, &scratch, &sel];
        let n_layers = layers.len() as u64;
        let chunks = n_chunks as u64;
        let build =
            |entry: &'static str, phase: u32, pass: u32, set: bool, drop_only: bool, wgs: u64| {
                let spec = KernelSpec::new("select", entry, BINDINGS)
                    .with_override("PHASE", f64::from(phase))
                    .with_override("PASS", f64::from(pass))
                    .with_override("GROW_SET", f64::from(u8::from(set)))
                    .with_override("DROP_ONLY", f64::from(u8::from(drop_only)))
                    .with_override("ALL_ELIGIBLE", f64::from(u8::from(all_eligible)))
                    .with_override("APPLY", f64::from(u8::from(apply && phase == 1)))
                    .with_override("FUSE_DROP", f64::from(u8::from(apply && phase == 1)));
                Dispatch::build(ctx, &spec, bytemuck::bytes_of(&params), &bufs, wgs)
            };
        let phase_ops = |phase: u32, set: bool| -> Result<Vec<Dispatch>> {
            let mut v = vec![build(
                "sel_init",
                phase,
                0,
                set,
                false,
                n_layers.div_ceil(64),
            )?];
            for pass in 0..4 {
                v.push(build(
                    "sel_hist",
                    phase,
                    pass,
                    set,
                    false,
                    chunks.div_ceil(64),
                )?);
                v.push(build(
                    "sel_scan",
                    phase,
                    pass,
                    set,
                    false,
                    n_layers.div_ceil(64),
                )?);
            }
            v.push(build(
                "sel_tiecount",
                phase,
                0,
                set,
                false,
                chunks.div_ceil(64),
            )?);
            v.push(build(
                "sel_tiescan",
                phase,
                0,
                set,
                false,
                n_layers.div_ceil(64),
            )?);
            v.push(build(
                "sel_mark",
                phase,
                0,
                set,
                false,
                chunks.div_ceil(64),
            )?);
            Ok(v)
        };
        let elems = (total as u64).div_ceil(256);
        let mut drop = phase_ops(0, false)?;
        // With `apply` the first grow pass does the drop phase's mark (FUSE_DROP).
        let drop_mark = if apply { drop.pop() } else { None };
        Ok(MaskUpdater {
            drop,
            drop_mark,
            grow_score: phase_ops(1, false)?,
            grow_random: phase_ops(1, true)?,
            apply_drop_only: build("mask_apply", 0, 0, false, true, elems)?,
            layers,
            chunk_map,
            meta,
            scratch,
            sel,
            seed,
        })
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[LayerPlacement] {
        &self.layers
    }

    /// Number of dispatches one update encodes for `rule`.
    pub fn dispatch_count(&self, rule: GrowRule) -> usize {
        self.dispatches(rule).len()
    }

    /// Writes the layer table for an update at `step` with per-layer `counts`.
    pub fn prepare(&self, ctx: &GpuContext, step: u32, counts: &[LayerCounts]) -> Result<()> {
        if counts.len() != self.layers.len() {
            return Err(RiglError::invalid(format!(
                "mask update: {} layer counts for {} layers",
                counts.len(),
                self.layers.len()
            )));
        }
        let mut meta = vec![0u32; HEADER + self.layers.len() * LAYER_WORDS];
        meta[0] = self.seed;
        meta[1] = step;
        let mut chunk0 = 0usize;
        for (li, (l, c)) in self.layers.iter().zip(counts).enumerate() {
            if c.k_keep + c.k_grow > l.n {
                return Err(RiglError::invalid(format!(
                    "mask update of layer {}: keeping {} and growing {} exceeds its {} weights",
                    l.name, c.k_keep, c.k_grow, l.n
                )));
            }
            let nchunks = l.n.div_ceil(CHUNK);
            let row = &mut meta[HEADER + li * LAYER_WORDS..HEADER + (li + 1) * LAYER_WORDS];
            row.copy_from_slice(&[
                l.offset as u32,
                l.n as u32,
                c.k_keep as u32,
                c.k_grow as u32,
                chunk0 as u32,
                nchunks as u32,
                l.id,
                0,
            ]);
            chunk0 += nchunks;
        }
        meta.extend_from_slice(&self.chunk_map);
        ctx.queue.write_buffer(
            &self.meta.buffer,
            self.meta.offset,
            bytemuck::cast_slice(&meta),
        );
        Ok(())
    }

    /// The dispatches of one update, in order (after [`MaskUpdater::prepare`]). With growth, the
    /// grow phase's last pass applies the update to weights, mask and momentum; without
    /// ([`GrowRule::None`]) a pass of its own applies the drop.
    pub fn dispatches(&self, rule: GrowRule) -> Vec<&Dispatch> {
        let mut v: Vec<&Dispatch> = self.drop.iter().collect();
        match rule {
            GrowRule::Score => v.extend(self.grow_score.iter()),
            GrowRule::Random => v.extend(self.grow_random.iter()),
            GrowRule::None => {
                v.extend(self.drop_mark.iter());
                v.push(&self.apply_drop_only)
            }
        }
        v
    }

    /// The drop phase alone (radix select over |w| of the active elements; bit 0 of the
    /// selection marks the kept ones), after [`MaskUpdater::prepare`].
    pub fn drop_dispatches(&self) -> Vec<&Dispatch> {
        self.drop.iter().chain(self.drop_mark.iter()).collect()
    }

    /// The grow phase alone (bit 1 of the selection marks the grown positions), after
    /// [`MaskUpdater::prepare`]; `rule` must not be [`GrowRule::None`]. On an updater built by
    /// [`MaskUpdater::new`] its last pass also applies the update.
    pub fn grow_dispatches(&self, rule: GrowRule) -> Vec<&Dispatch> {
        match rule {
            GrowRule::Score => self.grow_score.iter().collect(),
            GrowRule::Random => self.grow_random.iter().collect(),
            GrowRule::None => Vec::new(),
        }
    }

    /// The per-element selection bits of the last update (bit 0 kept, bit 1 grown).
    pub fn selection(&self) -> &Tensor {
        &self.sel
    }

    /// Records one update into a compute pass (after [`MaskUpdater::prepare`]).
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, rule: GrowRule) {
        for d in self.dispatches(rule) {
            d.encode(pass);
        }
    }

    /// Number of new connections (grown positions that were inactive) per layer in the last
    /// update. Reads back one word per layer.
    pub fn read_new_connections(&self, ctx: &GpuContext) -> Result<Vec<usize>> {
        let l = self.layers.len();
        let start = l * STATE_STRIDE + self.chunk_map.len();
        let view = self.scratch.slice_unaligned(start, l)?;
        Ok(crate::gpu::buffer::read_bytes(
            ctx,
            &view.buffer,
            view.offset,
            view.bytes(),
            "new connections",
        )?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect())
    }

    /// Prepares, submits and waits for one update.
    pub fn run(
        &self,
        ctx: &GpuContext,
        step: u32,
        counts: &[LayerCounts],
        rule: GrowRule,
    ) -> Result<()> {
        self.prepare(ctx, step, counts)?;
        ops::run(ctx, "mask update", &self.dispatches(rule))
    }
}
