//! The kernels' source (`came.cu`), compiled at run time with NVRTC once per process and
//! architecture, and loaded into a context; the names of the kernels of one pair of storage
//! types; and whether the CUDA libraries can be loaded at all.

use std::format;
use std::string::{String, ToString};
use std::sync::{Arc, OnceLock};
use std::vec::Vec;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use super::abi::CudaElement;
use super::error::CudaError;

/// The kernels' source, compiled at run time.
pub(super) const SOURCE: &str = include_str!("came.cu");

/// Which types a kernel is instantiated for in `came.cu`, and so how its name ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    /// The compute type only (`INSTANTIATE_T`): `came_finish_sq_f32`.
    Compute,
    /// The gradients' type (`INSTANTIATE_G`): `came_tile_sq_bf16`.
    Grad,
    /// The parameters' type (`INSTANTIATE_P`): `came_tile_apply_bf16`.
    Param,
    /// Both (`INSTANTIATE_PG`): `came_vector_update_f32_bf16`, parameters first.
    Both,
}

/// Every kernel of a step, in the order of [`Kernels`]' fields, with what it depends on.
const KERNELS: [(&str, By); 12] = [
    ("tile_sq", By::Grad),
    ("tile_res", By::Grad),
    ("finish_sq", By::Compute),
    ("finish_res", By::Compute),
    ("factors_sq", By::Compute),
    ("factors_res", By::Compute),
    ("commit_sq", By::Compute),
    ("tile_norm", By::Grad),
    ("vector_norm", By::Grad),
    ("finish_norm", By::Compute),
    ("vector_update", By::Both),
    ("tile_apply", By::Param),
];

/// The name of kernel `kernel` (one of [`KERNELS`]) for parameters stored in `P` and gradients
/// in `G`.
fn kernel_name<P: CudaElement, G: CudaElement<Compute = P::Compute>>(kernel: &str) -> String {
    let by = KERNELS
        .iter()
        .find(|(k, _)| *k == kernel)
        .map_or(By::Compute, |(_, by)| *by);
    match by {
        By::Compute => format!("came_{kernel}_{}", <P::Compute as CudaElement>::NAME),
        By::Grad => format!("came_{kernel}_{}", G::NAME),
        By::Param => format!("came_{kernel}_{}", P::NAME),
        By::Both => format!("came_{kernel}_{}_{}", P::NAME, G::NAME),
    }
}

/// Whether libcuda can be loaded (cudarc panics on its first call otherwise).
pub(super) fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library with libloading; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnvrtc can be loaded.
pub(super) fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library with libloading; no NVRTC call is made.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the kernels to PTX for a virtual architecture (`compute_XY`), once per process and
/// architecture: those of every storage type (`f32`, `f64`, bf16, f16 and the mixes
/// [`CudaCame`](super::CudaCame) takes), 42 entry points in one module. Needs NVRTC only, no
/// GPU and no CUDA header: a trainer can check its CUDA setup with it.
///
/// # Errors
/// [`CudaError::NoCuda`] without libnvrtc, [`CudaError::Compile`] with NVRTC's log.
pub fn compile_kernels(arch: &'static str) -> Result<Ptx, CudaError> {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(&'static str, Ptx)>>> = OnceLock::new();
    if !nvrtc_present() {
        return Err(CudaError::NoCuda("libnvrtc cannot be loaded"));
    }
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, ptx)) = cache.iter().find(|(a, _)| *a == arch) {
        return Ok(ptx.clone());
    }
    let options = CompileOptions {
        // no contraction into fused multiply-adds: the same roundings as the CPU kernels
        fmad: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        arch: Some(arch),
        name: Some("came.cu".to_string()),
        ..Default::default()
    };
    let ptx =
        compile_ptx_with_opts(SOURCE, options).map_err(|e| CudaError::Compile(e.to_string()))?;
    cache.push((arch, ptx.clone()));
    Ok(ptx)
}

/// NVRTC's virtual architecture for a compute capability.
fn arch_for(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (9, _) => "compute_90",
        (8, 9) => "compute_89",
        (8, 7) => "compute_87",
        (8, 6) => "compute_86",
        (8, _) => "compute_80",
        (7, 5) => "compute_75",
        (7, _) => "compute_70",
        (m, _) if m >= 10 => "compute_90",
        _ => "compute_60",
    }
}

/// The kernels of one pair of storage types, loaded in a context.
pub(super) struct Kernels {
    _module: Arc<CudaModule>,
    pub tile_sq: CudaFunction,
    pub tile_res: CudaFunction,
    pub finish_sq: CudaFunction,
    pub finish_res: CudaFunction,
    pub factors_sq: CudaFunction,
    pub factors_res: CudaFunction,
    pub commit_sq: CudaFunction,
    pub tile_norm: CudaFunction,
    pub vector_norm: CudaFunction,
    pub finish_norm: CudaFunction,
    pub vector_update: CudaFunction,
    pub tile_apply: CudaFunction,
}

impl Kernels {
    /// The kernels for parameters stored in `P` and gradients in `G`, compiled (once per
    /// process and architecture) and loaded into `ctx`.
    pub(super) fn load<P: CudaElement, G: CudaElement<Compute = P::Compute>>(
        ctx: &Arc<CudaContext>,
    ) -> Result<Self, CudaError> {
        let (major, minor) = ctx.compute_capability()?;
        let module = ctx.load_module(compile_kernels(arch_for(major, minor))?)?;
        let f = |name: &str| module.load_function(&kernel_name::<P, G>(name));
        Ok(Self {
            tile_sq: f("tile_sq")?,
            tile_res: f("tile_res")?,
            finish_sq: f("finish_sq")?,
            finish_res: f("finish_res")?,
            factors_sq: f("factors_sq")?,
            factors_res: f("factors_res")?,
            commit_sq: f("commit_sq")?,
            tile_norm: f("tile_norm")?,
            vector_norm: f("vector_norm")?,
            finish_norm: f("finish_norm")?,
            vector_update: f("vector_update")?,
            tile_apply: f("tile_apply")?,
            _module: module,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    use half::{bf16, f16};

    use super::{CudaElement, KERNELS, SOURCE, arch_for, kernel_name};

    /// The kernel names `came.cu` instantiates, read from its `INSTANTIATE_*` macros and their
    /// uses (no NVRTC needed).
    fn instantiated() -> BTreeSet<String> {
        let lines: Vec<&str> = SOURCE.lines().collect();
        let mut names = BTreeSet::new();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.strip_prefix("#define INSTANTIATE_") else {
                continue;
            };
            let macro_name = format!("INSTANTIATE_{}(", &rest[..rest.find('(').unwrap()]);
            // the kernels the macro defines: `came_<kernel>_##S` on its continued lines
            let mut kernels = Vec::new();
            for body in lines[i + 1..].iter().take_while(|l| !l.trim().is_empty()) {
                for part in body.split("came_").skip(1) {
                    if let Some(end) = part.find("_##S") {
                        kernels.push(String::from(&part[..end]));
                    }
                }
            }
            assert!(!kernels.is_empty(), "{macro_name} defines no kernel");
            for use_line in lines.iter().filter(|l| l.starts_with(&macro_name)) {
                let args = use_line[macro_name.len()..].trim_end_matches(')');
                let suffix = args.rsplit(',').next().unwrap().trim();
                for k in &kernels {
                    assert!(
                        names.insert(format!("came_{k}_{suffix}")),
                        "{k}_{suffix} twice"
                    );
                }
            }
        }
        names
    }

    fn names_of<P: CudaElement, G: CudaElement<Compute = P::Compute>>() -> Vec<String> {
        KERNELS
            .iter()
            .map(|(k, _)| kernel_name::<P, G>(k))
            .collect()
    }

    /// Every kernel the loader asks for, for every pair of storage types, is instantiated in
    /// `came.cu`, and every instantiation is asked for by some pair: checked without NVRTC.
    #[test]
    fn every_pair_of_types_finds_its_kernels_in_the_source() {
        let source = instantiated();
        let pairs = [
            names_of::<f32, f32>(),
            names_of::<f64, f64>(),
            names_of::<bf16, bf16>(),
            names_of::<f16, f16>(),
            names_of::<f32, bf16>(),
            names_of::<f32, f16>(),
            names_of::<bf16, f32>(),
            names_of::<bf16, f16>(),
            names_of::<f16, f32>(),
            names_of::<f16, bf16>(),
        ];
        let mut asked = BTreeSet::new();
        for names in &pairs {
            for name in names {
                assert!(
                    source.contains(name),
                    "{name} is not instantiated in came.cu"
                );
                asked.insert(name.clone());
            }
        }
        assert_eq!(asked, source, "instantiated but never loaded");
        // the f32 kernels keep the names they had before the 16-bit types came
        assert_eq!(kernel_name::<f32, f32>("tile_sq"), "came_tile_sq_f32");
        assert_eq!(
            kernel_name::<f32, f32>("finish_norm"),
            "came_finish_norm_f32"
        );
        assert_eq!(
            kernel_name::<bf16, bf16>("finish_norm"),
            "came_finish_norm_f32"
        );
        assert_eq!(kernel_name::<f32, bf16>("tile_norm"), "came_tile_norm_bf16");
        assert_eq!(
            kernel_name::<f32, bf16>("tile_apply"),
            "came_tile_apply_f32"
        );
        assert_eq!(
            kernel_name::<bf16, f32>("vector_update"),
            "came_vector_update_bf16_f32"
        );
    }

    #[test]
    fn architectures_map_to_nvrtc_targets() {
        assert_eq!(arch_for(9, 0), "compute_90");
        assert_eq!(arch_for(8, 6), "compute_86");
        assert_eq!(arch_for(8, 0), "compute_80");
        assert_eq!(arch_for(7, 5), "compute_75");
        assert_eq!(arch_for(12, 0), "compute_90");
        assert_eq!(arch_for(6, 1), "compute_60");
    }
}
