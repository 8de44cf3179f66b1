//! Reading, replaying and checking reference trajectories (the format of
//! `tests/data/golden/FORMAT.md`). Shared by the tests and the `replay` example.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Element, Float, Shape};
use serde_json::Value;

/// Element type of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    /// bfloat16 parameters and gradients, float32 state (`lowp/`)
    BF16,
    /// float16 parameters and gradients, float32 state (`lowp/`)
    F16,
}

/// Which optimizer produced a case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Came(CameConfig),
    AdamW(AdamWConfig),
}

/// One reference trajectory. Values are stored widened to `f64`; float32 cases were parsed as
/// `f32` first, so widening is exact.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub optimizer: Optimizer,
    pub param0: Vec<f64>,
    pub grads: Vec<Vec<f64>>,
    pub params: Vec<Vec<f64>>,
    pub state: BTreeMap<String, Vec<f64>>,
    pub resume_after_step: Option<usize>,
    /// Where the case was read from: a resume case's state is the `.safetensors` file beside it.
    pub path: Option<std::path::PathBuf>,
}

/// FORMAT.md's tolerances.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
    pub srtol: f64,
}

impl Dtype {
    pub fn tolerance(self) -> Tolerance {
        match self {
            Dtype::F32 => Tolerance {
                atol: 5e-6,
                rtol: 5e-6,
                srtol: 1e-5,
            },
            Dtype::F64 => Tolerance {
                atol: 1e-12,
                rtol: 1e-12,
                srtol: 1e-11,
            },
            // the state is float32; parameters are checked against one 16-bit ulp instead
            Dtype::BF16 | Dtype::F16 => Dtype::F32.tolerance(),
        }
    }

    /// One unit in the last place of the 16-bit value `r` (lowp/FORMAT: each parameter
    /// within one ulp of the reference); `None` for the 32- and 64-bit dtypes.
    pub fn ulp16(self, r: f64) -> Option<f64> {
        let next = |bits: u16, up: u16| (bits & 0x8000) | ((bits & 0x7fff) + up);
        match self {
            Dtype::BF16 => {
                let b = half::bf16::from_f64(r).to_bits();
                Some(
                    (half::bf16::from_bits(next(b, 1)).to_f64()
                        - half::bf16::from_bits(b).to_f64())
                    .abs(),
                )
            }
            Dtype::F16 => {
                let b = half::f16::from_f64(r).to_bits();
                Some(
                    (half::f16::from_bits(next(b, 1)).to_f64() - half::f16::from_bits(b).to_f64())
                        .abs(),
                )
            }
            Dtype::F32 | Dtype::F64 => None,
        }
    }
}

fn field<'v>(v: &'v Value, key: &str) -> Result<&'v Value, String> {
    v.get(key).ok_or_else(|| format!("missing field `{key}`"))
}

fn number(v: &Value, dtype: Dtype) -> Result<f64, String> {
    // the shortest decimal of the value in the case's own dtype: parse it in that dtype
    let text = match v {
        Value::Number(n) => n.to_string(),
        other => return Err(format!("expected a number, got {other}")),
    };
    match dtype {
        // 16-bit values are written as the shortest decimal of their exact float32 value
        Dtype::F32 | Dtype::BF16 | Dtype::F16 => text.parse::<f32>().map(f64::from),
        Dtype::F64 => text.parse::<f64>(),
    }
    .map_err(|e| format!("bad number {text}: {e}"))
}

fn numbers(v: &Value, dtype: Dtype) -> Result<Vec<f64>, String> {
    v.as_array()
        .ok_or("expected an array of numbers")?
        .iter()
        .map(|x| number(x, dtype))
        .collect()
}

fn matrix(v: &Value, dtype: Dtype) -> Result<Vec<Vec<f64>>, String> {
    v.as_array()
        .ok_or("expected an array of arrays")?
        .iter()
        .map(|row| numbers(row, dtype))
        .collect()
}

fn f64_of(v: &Value) -> Result<f64, String> {
    number(v, Dtype::F64)
}

fn pair(v: &Value) -> Result<(f64, f64), String> {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => Ok((f64_of(a)?, f64_of(b)?)),
        _ => Err("expected two numbers".into()),
    }
}

impl Case {
    pub fn load(path: &Path) -> Result<Case, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut case = Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        case.path = Some(path.to_path_buf());
        Ok(case)
    }

    pub fn parse(text: &str) -> Result<Case, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let dtype = match field(&v, "dtype")?.as_str() {
            Some("float32") => Dtype::F32,
            Some("float64") => Dtype::F64,
            Some("bfloat16") => Dtype::BF16,
            Some("float16") => Dtype::F16,
            other => return Err(format!("unsupported dtype {other:?}")),
        };
        let shape = field(&v, "shape")?
            .as_array()
            .ok_or("shape must be an array")?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or("bad dim"))
            .collect::<Result<Vec<_>, _>>()?;
        let source = v.get("source").and_then(Value::as_str).unwrap_or("");
        let cfg = field(&v, "config")?;
        let lr = f64_of(field(cfg, "lr")?)?;
        let weight_decay = f64_of(field(cfg, "weight_decay")?)?;
        let betas = field(cfg, "betas")?
            .as_array()
            .ok_or("betas must be an array")?;
        let is_adamw = source.contains("AdamW") || betas.len() == 2;
        let optimizer = if is_adamw {
            let [b1, b2] = betas.as_slice() else {
                return Err("AdamW needs two betas".into());
            };
            Optimizer::AdamW(AdamWConfig {
                lr,
                betas: (f64_of(b1)?, f64_of(b2)?),
                eps: f64_of(field(cfg, "eps")?)?,
                weight_decay,
            })
        } else {
            let [b1, b2, b3] = betas.as_slice() else {
                return Err("CAME needs three betas".into());
            };
            Optimizer::Came(CameConfig {
                lr,
                betas: (f64_of(b1)?, f64_of(b2)?, f64_of(b3)?),
                eps: pair(field(cfg, "eps")?)?,
                clip_threshold: f64_of(field(cfg, "clip_threshold")?)?,
                weight_decay,
                ..CameConfig::default()
            })
        };
        let mut state = BTreeMap::new();
        if let Some(s) = v.get("state").and_then(Value::as_object) {
            for (key, values) in s {
                let state_dtype = if dtype == Dtype::F64 {
                    dtype
                } else {
                    Dtype::F32
                };
                state.insert(key.clone(), numbers(values, state_dtype)?);
            }
        }
        Ok(Case {
            name: field(&v, "name")?
                .as_str()
                .ok_or("name must be a string")?
                .to_owned(),
            dtype,
            shape,
            optimizer,
            param0: numbers(field(&v, "param0")?, dtype)?,
            grads: matrix(field(&v, "grads")?, dtype)?,
            params: matrix(field(&v, "params")?, dtype)?,
            state,
            resume_after_step: v
                .get("resume_after_step")
                .and_then(Value::as_u64)
                .map(|s| s as usize),
            path: None,
        })
    }
}

/// What a replay produced: the parameters after each step and the final named state.
#[derive(Clone, Debug, Default)]
pub struct Trajectory {
    pub params: Vec<Vec<f64>>,
    pub state: BTreeMap<String, Vec<f64>>,
    /// For a resume case, the optimizer's checkpoint after the last step (with parameters).
    pub checkpoint: Option<Vec<u8>>,
}

fn to_t<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter()
        .map(|&x| T::from_compute(<T::Compute as Float>::from_f64(x)))
        .collect()
}

fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_compute().as_f64()).collect()
}

/// Runs a case from `param0` (or from the given starting point and state) through its grads.
pub fn replay(case: &Case) -> Result<Trajectory, String> {
    match case.dtype {
        Dtype::F32 => replay_as::<f32>(case),
        Dtype::F64 => replay_as::<f64>(case),
        Dtype::BF16 => replay_lowp::<half::bf16>(case),
        Dtype::F16 => replay_lowp::<half::f16>(case),
    }
}

/// A 16-bit case: parameters and gradients in `P`, state in `f32`, through the borrowed step.
fn replay_lowp<P: Element<Compute = f32>>(case: &Case) -> Result<Trajectory, String> {
    let Optimizer::Came(config) = case.optimizer else {
        return Err("16-bit cases are CAME cases".into());
    };
    let mut param: Vec<P> = to_t(&case.param0);
    let shape = Shape::new(&case.shape).map_err(|e| e.to_string())?;
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let mut out = Trajectory::default();
    for grad in &case.grads {
        let grad: Vec<P> = to_t(grad);
        came::step(&config, &shape, &mut param, &grad, &mut state).map_err(|e| e.to_string())?;
        out.params.push(to_f64(&param));
    }
    let parts = state.parts(&shape).map_err(|e| e.to_string())?;
    for (name, values) in parts.named() {
        out.state.insert(name.to_owned(), to_f64(values));
    }
    Ok(out)
}

fn replay_as<T: Float>(case: &Case) -> Result<Trajectory, String> {
    let mut param: Vec<T> = to_t(&case.param0);
    let mut out = Trajectory::default();
    match case.optimizer {
        Optimizer::Came(config) if case.resume_after_step.is_some() => {
            return resume::<T>(case, config);
        }
        Optimizer::Came(config) => {
            let shape = Shape::new(&case.shape).map_err(|e| e.to_string())?;
            let mut buf = vec![T::zero(); shape.state_len()];
            let mut state = CameState::new(&mut buf);
            for grad in &case.grads {
                let grad: Vec<T> = to_t(grad);
                came::step(&config, &shape, &mut param, &grad, &mut state)
                    .map_err(|e| e.to_string())?;
                out.params.push(to_f64(&param));
            }
            let parts = state.parts(&shape).map_err(|e| e.to_string())?;
            for (name, values) in parts.named() {
                out.state.insert(name.to_owned(), to_f64(values));
            }
        }
        Optimizer::AdamW(config) => {
            let mut buf = vec![T::zero(); adamw::state_len(&case.shape)];
            let mut state = AdamWState::new(&mut buf);
            for grad in &case.grads {
                let grad: Vec<T> = to_t(grad);
                adamw::step(&config, &mut param, &grad, &mut state).map_err(|e| e.to_string())?;
                out.params.push(to_f64(&param));
            }
            let (m, v) = state.parts();
            out.state.insert("exp_avg".into(), to_f64(m));
            out.state.insert("exp_avg_sq".into(), to_f64(v));
        }
    }
    Ok(out)
}

/// A resume case: loads the reference's mid-run `.safetensors` (state and parameters after
/// `resume_after_step` steps) into the owned optimizer and runs the remaining steps.
#[cfg(feature = "std")]
fn resume<T: Float>(case: &Case, config: CameConfig) -> Result<Trajectory, String> {
    use came::Optimizer as _;

    let after = case.resume_after_step.unwrap_or(0);
    let path = case
        .path
        .as_ref()
        .ok_or("a resume case needs the path it was read from")?
        .with_extension("safetensors");
    let mut opt = came::Came::<T>::new(config).map_err(|e| e.to_string())?;
    opt.register("0", &case.shape).map_err(|e| e.to_string())?;
    let mut param = vec![T::zero(); case.param0.len()];
    opt.load_with_params(&path, &mut [&mut param])
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Trajectory::default();
    for grad in case.grads.get(after..).unwrap_or_default() {
        let grad: Vec<T> = to_t(grad);
        opt.step(&mut [(&mut param, &grad)])
            .map_err(|e| e.to_string())?;
        out.params.push(to_f64(&param));
    }
    for piece in opt.state(came::optim::TensorId(0)).unwrap_or_default() {
        out.state
            .insert(piece.name.to_owned(), to_f64(piece.values));
    }
    let checkpoint = opt.to_safetensors(Some(&[&param]));
    out.checkpoint = Some(checkpoint.map_err(|e| e.to_string())?);
    Ok(out)
}

#[cfg(not(feature = "std"))]
#[allow(clippy::extra_unused_type_parameters)] // the same signature as with `std`
fn resume<T: Float>(_: &Case, _: CameConfig) -> Result<Trajectory, String> {
    Err("resume cases load a checkpoint: build with --features std".into())
}

/// The worst error of a replay, as a fraction of its tolerance (<= 1 passes), with where.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub worst: f64,
    pub at: String,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.worst <= 1.0
    }
}

/// Compares a replay with the case, step by step and state tensor by state tensor.
pub fn compare(case: &Case, got: &Trajectory) -> Verdict {
    let tol = case.dtype.tolerance();
    let mut v = Verdict {
        worst: 0.0,
        at: String::new(),
    };
    let mut note = |ratio: f64, at: &dyn Fn() -> String| {
        // NaN counts as a failure
        let ratio = if ratio.is_nan() { f64::INFINITY } else { ratio };
        if ratio > v.worst {
            v.worst = ratio;
            v.at = at();
        }
    };
    let first = case.params.len().saturating_sub(got.params.len());
    if got.params.len() > case.params.len() {
        note(f64::INFINITY, &|| "more steps than the reference".into());
    }
    for (i, (want, have)) in case.params[first..].iter().zip(&got.params).enumerate() {
        if want.len() != have.len() {
            note(f64::INFINITY, &|| format!("step {}: length", first + i + 1));
            continue;
        }
        for (j, (&r, &p)) in want.iter().zip(have).enumerate() {
            let bound = case.dtype.ulp16(r).unwrap_or(tol.atol + tol.rtol * r.abs());
            let ratio = (p - r).abs() / bound;
            note(ratio, &|| format!("step {} element {j}", first + i + 1));
        }
    }
    for (key, want) in &case.state {
        let Some(have) = got.state.get(key) else {
            note(f64::INFINITY, &|| format!("state {key} missing"));
            continue;
        };
        if want.len() != have.len() {
            note(f64::INFINITY, &|| format!("state {key}: length"));
            continue;
        }
        let scale = want.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
        for (j, (&r, &s)) in want.iter().zip(have).enumerate() {
            let ratio = (s - r).abs() / (tol.atol + tol.srtol * scale);
            note(ratio, &|| format!("state {key} element {j}"));
        }
    }
    v
}

fn push_numbers(out: &mut String, values: &[f64], dtype: Dtype) {
    out.push('[');
    for (i, &x) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !x.is_finite() {
            out.push_str("null");
        } else if dtype != Dtype::F64 {
            // shortest decimal that reads back to the same f32
            let _ = write!(out, "{:?}", x as f32);
        } else {
            let _ = write!(out, "{x:?}");
        }
    }
    out.push(']');
}

/// `{"name", "params": [[...] after each step], "state": {key: [...]}}`, numbers in the case's
/// dtype's shortest round-trip form.
pub fn trajectory_json(case: &Case, got: &Trajectory) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"name\":{},\"params\":[",
        Value::from(case.name.as_str())
    );
    for (i, p) in got.params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_numbers(&mut out, p, case.dtype);
    }
    out.push_str("],\"state\":{");
    for (i, (key, values)) in got.state.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:", Value::from(key.as_str()));
        push_numbers(&mut out, values, case.dtype);
    }
    out.push_str("}}\n");
    out
}

/// Every `*.json` directly in `dir`, sorted.
pub fn json_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}
