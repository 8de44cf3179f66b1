//! The kernels' source (`came.cu`), compiled at run time with NVRTC once per process and
//! architecture, and loaded into a context; and whether the CUDA libraries can be loaded at all.

use std::format;
use std::string::ToString;
use std::sync::{Arc, OnceLock};
use std::vec::Vec;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use super::abi::CudaFloat;
use super::error::CudaError;

/// The kernels' source, compiled at run time.
const SOURCE: &str = include_str!("came.cu");

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
/// architecture. Needs NVRTC only, no GPU: a trainer can check its CUDA setup with it.
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

/// The kernels of one element type, loaded in a context.
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
    pub(super) fn load<T: CudaFloat>(ctx: &Arc<CudaContext>) -> Result<Self, CudaError> {
        let (major, minor) = ctx.compute_capability()?;
        let module = ctx.load_module(compile_kernels(arch_for(major, minor))?)?;
        let f = |name: &str| module.load_function(&format!("came_{name}_{}", T::SUFFIX));
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
    use super::arch_for;

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
