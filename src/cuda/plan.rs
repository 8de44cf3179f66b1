//! The device layout of the registered tensors: every tensor's state in one slab, laid out per
//! tensor exactly as [`crate::StateLayout`] lays out a CPU state buffer (so state moves between
//! host and device as one copy per tensor), scratch space, and the task lists the kernels walk.
// Offsets and sizes go to the device as `long long`; device memory is far below 2^63 elements.
#![allow(clippy::cast_possible_wrap)]

use std::vec::Vec;

use super::abi::{Span, THREADS, TILE_C, TILE_R, Task, TensorDesc, VEC_CHUNK};
use crate::{Layout, Shape};

/// The device layout being planned: descriptors, task lists, buffer sizes.
#[derive(Default)]
pub(super) struct Plan {
    pub descs: Vec<TensorDesc>,
    pub tiles: Vec<Task>,
    pub chunks: Vec<Task>,
    pub spans: Vec<Span>,
    pub mats: Vec<Task>,
    pub state_len: usize,
    pub work_len: usize,
    pub norm_len: usize,
}

impl Plan {
    /// Places one tensor; returns its position in the device table (`None` when empty).
    pub(super) fn add(&mut self, shape: &Shape, group: usize) -> Option<usize> {
        let n = shape.numel();
        if n == 0 {
            return None;
        }
        let t = self.descs.len();
        let ti = i32::try_from(t).unwrap_or(i32::MAX);
        // the tensor's named state, laid out as on the CPU, at `base` in the state slab
        let layout = shape.state_layout();
        let base = self.state_len;
        let at = |key| base + layout.piece(key).map_or(0, |p| p.range.start);
        let mut d = TensorDesc {
            numel: n as i64,
            m: at("exp_avg") as i64,
            group: i32::try_from(group).unwrap_or(0),
            ..TensorDesc::default()
        };
        self.state_len += layout.named_len();
        match shape.layout() {
            Layout::Vector { .. } => {
                d.sq_row = at("exp_avg_sq") as i64;
                let parts = n.div_ceil(VEC_CHUNK);
                (d.norm_part, d.norm_parts) = (self.norm_len as i64, parts as i64);
                self.norm_len += parts;
                for c in 0..parts {
                    let b = c as i64;
                    self.chunks.push(Task {
                        tensor: ti,
                        b,
                        ..Task::default()
                    });
                }
            }
            Layout::Factored { batch, rows, cols } => {
                let (br, bc) = (batch * rows, batch * cols);
                let (tr, tc) = (rows.div_ceil(TILE_R), cols.div_ceil(TILE_C));
                d.factored = 1;
                (d.batch, d.rows, d.cols) = (batch as i64, rows as i64, cols as i64);
                (d.sq_row, d.sq_col) = (at("exp_avg_sq_row") as i64, at("exp_avg_sq_col") as i64);
                (d.res_row, d.res_col) =
                    (at("exp_avg_res_row") as i64, at("exp_avg_res_col") as i64);
                // the workspace: new statistics and factors as on the CPU, then the tiles'
                // partial sums instead of the CPU's per-lane column sums
                let w = layout.workspace();
                let wk = self.work_len as i64 - layout.named_len() as i64;
                let work = |r: core::ops::Range<usize>| wk + r.start as i64;
                (d.next_row, d.next_col) = (work(w.next_row), work(w.next_col));
                (d.fac_row, d.fac_col) = (work(w.row_factors), work(w.col_factors));
                d.row_part = work(w.col_sums);
                d.col_part = d.row_part + (tc * br) as i64;
                self.work_len += 2 * (br + bc) + tc * br + tr * bc;
                (d.tiles_r, d.tiles_c) = (tr as i64, tc as i64);
                (d.norm_part, d.norm_parts) = (self.norm_len as i64, (batch * tr * tc) as i64);
                self.norm_len += batch * tr * tc;
                for b in 0..batch as i64 {
                    self.mats.push(Task {
                        tensor: ti,
                        b,
                        ..Task::default()
                    });
                    for r in 0..tr as i64 {
                        for c in 0..tc as i64 {
                            self.tiles.push(Task {
                                tensor: ti,
                                pad: 0,
                                b,
                                tr: r,
                                tc: c,
                            });
                        }
                    }
                }
                for (cols_flag, len) in [(0, br), (1, bc)] {
                    for start in (0..len).step_by(THREADS as usize) {
                        let take = (len - start).min(THREADS as usize);
                        let (start, len) = (start as i64, take as i64);
                        self.spans.push(Span {
                            tensor: ti,
                            cols: cols_flag,
                            start,
                            len,
                        });
                    }
                }
            }
        }
        self.descs.push(d);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(x: i64) -> usize {
        usize::try_from(x).unwrap()
    }

    /// The GPU plan puts every named piece of state where the CPU layout has it, relative to
    /// the tensor's place in the slab: checked here without a GPU.
    #[test]
    fn device_state_offsets_follow_the_cpu_layout() {
        let shapes: [&[usize]; 7] = [
            &[7],
            &[],
            &[300, 257],
            &[3, 70, 5],
            &[1, 1],
            &[0, 4],
            &[4096],
        ];
        let mut plan = Plan::default();
        let mut bases = Vec::new();
        for (group, dims) in shapes.iter().enumerate() {
            let shape = Shape::new(dims).unwrap();
            let base = plan.state_len;
            let device = plan.add(&shape, group % 2);
            if shape.numel() == 0 {
                assert_eq!(device, None);
                assert_eq!(plan.state_len, base);
                continue;
            }
            bases.push((shape, base, device.unwrap()));
        }
        for (shape, base, device) in bases {
            let d = plan.descs[device];
            let layout = shape.state_layout();
            let at = |key: &str| base + layout.piece(key).unwrap().range.start;
            assert_eq!(offset(d.m), at("exp_avg"));
            assert_eq!(offset(d.numel), shape.numel());
            if shape.is_factored() {
                assert_eq!(offset(d.sq_row), at("exp_avg_sq_row"));
                assert_eq!(offset(d.sq_col), at("exp_avg_sq_col"));
                assert_eq!(offset(d.res_row), at("exp_avg_res_row"));
                assert_eq!(offset(d.res_col), at("exp_avg_res_col"));
                assert_eq!(d.factored, 1);
            } else {
                assert_eq!(offset(d.sq_row), at("exp_avg_sq"));
                assert_eq!(d.factored, 0);
            }
        }
        // the slab holds exactly the named state of every tensor that has elements
        let named: usize = shapes
            .iter()
            .map(|d| Shape::new(d).unwrap())
            .filter(|s| s.numel() > 0)
            .map(|s| s.state_layout().named_len())
            .sum();
        assert_eq!(plan.state_len, named);
    }

    #[test]
    fn workspace_and_tasks_cover_each_matrix() {
        let mut plan = Plan::default();
        let shape = Shape::new(&[2, 130, 300]).unwrap();
        plan.add(&shape, 0);
        let d = plan.descs[0];
        let (br, bc) = (2 * 130, 2 * 300);
        // new statistics, then factors, then the tiles' row and column partial sums
        assert_eq!(offset(d.next_row), 0);
        assert_eq!(offset(d.next_col), br);
        assert_eq!(offset(d.fac_row), br + bc);
        assert_eq!(offset(d.fac_col), 2 * br + bc);
        assert_eq!(offset(d.row_part), 2 * (br + bc));
        let (tr, tc) = (130usize.div_ceil(TILE_R), 300usize.div_ceil(TILE_C));
        assert_eq!(offset(d.col_part), 2 * (br + bc) + tc * br);
        assert_eq!(plan.work_len, 2 * (br + bc) + tc * br + tr * bc);
        assert_eq!(plan.tiles.len(), 2 * tr * tc);
        assert_eq!(plan.mats.len(), 2);
        let span_total: i64 = plan.spans.iter().map(|s| s.len).sum();
        assert_eq!(offset(span_total), br + bc);
        assert_eq!(plan.norm_len, 2 * tr * tc);
        // a second tensor starts after the first's workspace
        plan.add(&Shape::new(&[10, 10]).unwrap(), 0);
        assert_eq!(
            offset(plan.descs[1].next_row),
            2 * (br + bc) + tc * br + tr * bc
        );
    }
}
