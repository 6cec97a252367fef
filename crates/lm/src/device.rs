//! Device selection and discovery of the libtorch runtime.
//!
//! The PyPI torch wheel splits libtorch into `libtorch_cpu.so` and `libtorch_cuda.so`.
//! A Rust binary references only CPU symbols, so the linker drops `libtorch_cuda.so`
//! and libtorch never registers its CUDA backend: `tch::Cuda::is_available()` would
//! say `false` even on a GPU machine. [`runtime`] therefore loads `libtorch_cuda.so`
//! from the directory the CPU library was loaded from, with `RTLD_NOW | RTLD_GLOBAL`,
//! once per process, before anything asks about CUDA. On a machine without an NVIDIA
//! driver (no `libcuda.so.1`) it is not loaded: CUDA could not run there, and the CUDA
//! libraries it pulls in would hold about 240 MB of memory for nothing.
//!
//! ```
//! use lm::device::{self, DeviceRequest};
//!
//! let runtime = device::runtime();
//! assert!(runtime.cpu_threads >= 1);
//! let request: DeviceRequest = "auto".parse()?;
//! let device = device::resolve(request)?;
//! assert_eq!(device.is_cuda(), runtime.cuda_available);
//! // Asking for CUDA where there is none is an error, never a panic.
//! if !runtime.cuda_available {
//!     assert!(device::resolve("cuda:0".parse()?).is_err());
//! }
//! # Ok::<(), lm::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::{Error, Result};

/// The CPU library of libtorch; its location tells where the rest of libtorch lives.
const CPU_LIBRARY: &str = "libtorch_cpu.so";
/// The CUDA half of libtorch, loaded at start-up when present.
const CUDA_LIBRARY: &str = "libtorch_cuda.so";
/// The NVIDIA driver's user-space library; without it CUDA cannot run.
const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Which device to run on, as a user writes it: `auto`, `cpu`, `cuda` or `cuda:N`.
///
/// `auto` picks the first CUDA device when one is usable, else the CPU; `cuda` is
/// `cuda:0`. Parsing ignores case and surrounding spaces. In configs it is a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceRequest {
    /// The first CUDA device if CUDA is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this index.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidDevice {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let normalized = spec.trim().to_ascii_lowercase();
        match normalized.as_str() {
            "" => Err(invalid("it is empty")),
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(index) => index
                    .parse::<usize>()
                    .map(Self::Cuda)
                    .map_err(|_| invalid("the CUDA index must be a non-negative integer")),
                None => Err(invalid("unknown device kind")),
            },
        }
    }
}

impl TryFrom<String> for DeviceRequest {
    type Error = Error;

    fn try_from(spec: String) -> Result<Self> {
        spec.parse()
    }
}

impl From<DeviceRequest> for String {
    fn from(request: DeviceRequest) -> Self {
        request.to_string()
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// What happened to `libtorch_cuda.so` at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CudaLibrary {
    /// Loaded from this path; CUDA is usable if a driver and a device are present.
    Loaded {
        /// The library that was loaded.
        path: PathBuf,
    },
    /// This libtorch has no CUDA library (a CPU-only build).
    NotShipped {
        /// Where it was looked for.
        searched: PathBuf,
    },
    /// The library is there but could not be loaded.
    LoadFailed {
        /// The library that failed.
        path: PathBuf,
        /// The dynamic loader's message.
        reason: String,
    },
    /// Not loaded: the machine has no NVIDIA driver (`libcuda.so.1` cannot be opened),
    /// so CUDA could not work anyway, and the CUDA libraries would only take memory
    /// (about 240 MB resident, measured on a CPU-only machine).
    NoDriver {
        /// The dynamic loader's message for `libcuda.so.1`.
        reason: String,
    },
    /// The process has no `libtorch_cpu.so` mapped, so there was nowhere to look.
    LibtorchNotLocated,
}

/// Facts about the libtorch this process runs on, gathered once by [`runtime`].
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    /// torch's version as its installation records it (e.g. `2.11.0+cu130`), if found.
    pub torch_version: Option<String>,
    /// The directory `libtorch_cpu.so` was loaded from.
    pub libtorch_dir: Option<PathBuf>,
    /// The outcome of loading `libtorch_cuda.so`.
    pub cuda_library: CudaLibrary,
    /// Whether libtorch can run on a CUDA device.
    pub cuda_available: bool,
    /// How many CUDA devices libtorch sees.
    pub cuda_device_count: usize,
    /// Whether cuDNN is usable.
    pub cudnn_available: bool,
    /// libtorch's intra-op CPU threads.
    pub cpu_threads: usize,
    /// What f32 linear layers run on, on the CPU ([`crate::cpu::kernel_description`]).
    pub cpu_linear: String,
}

impl Runtime {
    fn discover() -> Self {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let libtorch_dir = loaded_library_dir(&maps, CPU_LIBRARY);
        let cuda_library = match &libtorch_dir {
            Some(dir) => load_cuda_library(dir),
            None => CudaLibrary::LibtorchNotLocated,
        };
        let torch_version = libtorch_dir.as_deref().and_then(recorded_torch_version);
        // Only now, with the CUDA backend registered (or not), is the answer meaningful.
        let cuda_available = tch::Cuda::is_available();
        let cuda_device_count = if cuda_available {
            usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
        } else {
            0
        };
        Self {
            torch_version,
            libtorch_dir,
            cuda_library,
            cuda_available,
            cuda_device_count,
            cudnn_available: cuda_available && tch::Cuda::cudnn_is_available(),
            cpu_threads: usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1),
            cpu_linear: crate::cpu::kernel_description(),
        }
    }

    /// Why CUDA cannot be used, for error messages.
    pub fn cuda_unavailable_reason(&self) -> String {
        match &self.cuda_library {
            CudaLibrary::Loaded { .. } => "libtorch's CUDA backend is loaded but sees no usable \
                 GPU (no NVIDIA driver or no visible device)"
                .to_owned(),
            CudaLibrary::NotShipped { searched } => format!(
                "this libtorch is a CPU-only build ({CUDA_LIBRARY} is not in {})",
                searched.display()
            ),
            CudaLibrary::LoadFailed { path, reason } => {
                format!("loading {} failed: {reason}", path.display())
            }
            CudaLibrary::NoDriver { reason } => {
                format!("this machine has no NVIDIA driver ({reason})")
            }
            CudaLibrary::LibtorchNotLocated => format!(
                "{CPU_LIBRARY} is not mapped in this process, so {CUDA_LIBRARY} could not be found"
            ),
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = || "unknown".to_owned();
        writeln!(
            f,
            "torch version   {}",
            self.torch_version.clone().unwrap_or_else(unknown)
        )?;
        writeln!(
            f,
            "libtorch        {}",
            self.libtorch_dir
                .as_ref()
                .map(|dir| dir.display().to_string())
                .unwrap_or_else(unknown)
        )?;
        let library = match &self.cuda_library {
            CudaLibrary::Loaded { path } => format!("loaded from {}", path.display()),
            CudaLibrary::NotShipped { .. } => "not shipped (CPU-only libtorch)".to_owned(),
            CudaLibrary::LoadFailed { reason, .. } => format!("failed to load: {reason}"),
            CudaLibrary::NoDriver { .. } => "not loaded (no NVIDIA driver)".to_owned(),
            CudaLibrary::LibtorchNotLocated => "not looked for (libtorch not located)".to_owned(),
        };
        writeln!(f, "CUDA library    {library}")?;
        writeln!(
            f,
            "CUDA            {} ({} device(s)), cuDNN {}",
            if self.cuda_available {
                "available"
            } else {
                "not available"
            },
            self.cuda_device_count,
            if self.cudnn_available { "yes" } else { "no" }
        )?;
        writeln!(f, "CPU threads     {}", self.cpu_threads)?;
        write!(f, "CPU linear      {}", self.cpu_linear)
    }
}

/// The libtorch runtime of this process. The first call loads `libtorch_cuda.so` (see
/// the module docs); call it at start-up, before any other libtorch call that concerns
/// CUDA. Later calls return the same facts.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(Runtime::discover)
}

/// Hands memory the C allocator holds but no longer uses back to the operating system
/// (glibc's `malloc_trim`; nothing elsewhere). libtorch's CPU tensors come from
/// `malloc`, and glibc raises its mmap threshold after large frees, so the buffers of
/// loading and of a long generation stay in the process as free heap unless trimmed.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns unused pages of the allocator's own heap;
        // it has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Starts a new peak of this process's resident memory: returns free heap to the system
/// ([`release_free_memory`]), then has Linux reset the high-water mark (`VmHWM` in
/// `/proc/self/status`) to the current resident size by writing 5 to
/// `/proc/self/clear_refs` (Linux 4.0 and later). False where that is not possible.
pub fn reset_peak_memory() -> bool {
    release_free_memory();
    cfg!(target_os = "linux") && std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Turns a request into a concrete device, checking that it exists.
///
/// `auto` never fails; `cuda:N` fails with [`Error::CudaUnavailable`] when CUDA is not
/// usable and with [`Error::CudaDeviceOutOfRange`] when device `N` does not exist.
pub fn resolve(request: DeviceRequest) -> Result<Device> {
    let runtime = runtime();
    match request {
        DeviceRequest::Auto if runtime.cuda_available && runtime.cuda_device_count > 0 => {
            Ok(Device::Cuda(0))
        }
        DeviceRequest::Auto | DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda(index) => {
            if !runtime.cuda_available {
                return Err(Error::CudaUnavailable {
                    requested: request.to_string(),
                    reason: runtime.cuda_unavailable_reason(),
                });
            }
            if index >= runtime.cuda_device_count {
                return Err(Error::CudaDeviceOutOfRange {
                    index,
                    count: runtime.cuda_device_count,
                });
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// The directory of a shared library named `file_name` in a `/proc/<pid>/maps` listing.
fn loaded_library_dir(maps: &str, file_name: &str) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        // address perms offset dev inode pathname; the pathname may contain spaces.
        let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
        let path = Path::new(path);
        (path.file_name()? == file_name)
            .then(|| path.parent().map(Path::to_path_buf))
            .flatten()
    })
}

fn load_cuda_library(libtorch_dir: &Path) -> CudaLibrary {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // The library must stay loaded for the life of the process: its static initialisers
    // registered the CUDA backend with libtorch.
    static CUDA: OnceLock<Library> = OnceLock::new();

    let path = libtorch_dir.join(CUDA_LIBRARY);
    if !path.is_file() {
        return CudaLibrary::NotShipped {
            searched: libtorch_dir.to_path_buf(),
        };
    }
    // Opening the driver library does not initialise the driver; it only tells whether
    // there is one. It stays open (libtorch's CUDA runtime opens the same library when
    // it starts), so it is never unloaded and loaded again.
    static DRIVER: OnceLock<Library> = OnceLock::new();
    // SAFETY: libcuda's load-time initialisers do not touch the GPU.
    match unsafe { Library::open(Some(DRIVER_LIBRARY), RTLD_NOW) } {
        Ok(driver) => {
            let _ = DRIVER.set(driver);
        }
        Err(error) => {
            return CudaLibrary::NoDriver {
                reason: error.to_string(),
            };
        }
    }
    // SAFETY: libtorch_cuda.so belongs to the libtorch this process already runs on; its
    // initialisers only register CUDA hooks with that libtorch.
    match unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(library) => {
            let _ = CUDA.set(library);
            CudaLibrary::Loaded { path }
        }
        Err(error) => CudaLibrary::LoadFailed {
            path,
            reason: error.to_string(),
        },
    }
}

/// torch's version as recorded next to its libraries: `version.py` in a Python wheel,
/// `build-version` in the libtorch zip.
fn recorded_torch_version(libtorch_dir: &Path) -> Option<String> {
    let root = libtorch_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let version = text.lines().find_map(|line| {
            let value = line.trim().strip_prefix("__version__")?.trim_start();
            let value = value.strip_prefix('=')?.trim();
            Some(value.trim_matches(|c| c == '\'' || c == '"').to_owned())
        });
        if version.is_some() {
            return version;
        }
    }
    let text = std::fs::read_to_string(root.join("build-version")).ok()?;
    let version = text.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VmHWM` in MiB, as Linux reports it.
    fn peak_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    }

    #[test]
    fn a_reset_peak_forgets_what_was_freed_before() {
        if !cfg!(target_os = "linux") {
            return;
        }
        // 256 MiB written (so resident), then freed: the peak so far includes them.
        let buffer = vec![1u8; 256 << 20];
        std::hint::black_box(&buffer);
        drop(buffer);
        let before = peak_mib();
        assert!(
            reset_peak_memory(),
            "/proc/self/clear_refs could not be written"
        );
        let after = peak_mib();
        assert!(
            after < before - 200.0,
            "peak {after:.0} MiB after the reset, {before:.0} MiB before"
        );
    }

    #[test]
    fn device_strings_parse() {
        let cases = [
            ("auto", DeviceRequest::Auto),
            ("CPU", DeviceRequest::Cpu),
            (" cuda ", DeviceRequest::Cuda(0)),
            ("cuda:3", DeviceRequest::Cuda(3)),
            ("Cuda:12", DeviceRequest::Cuda(12)),
        ];
        for (spec, expected) in cases {
            assert_eq!(spec.parse::<DeviceRequest>().unwrap(), expected, "{spec}");
        }
    }

    #[test]
    fn bad_device_strings_are_named_in_the_error() {
        for spec in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "cuda0"] {
            let error = spec.parse::<DeviceRequest>().unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, Error::InvalidDevice { .. }), "{spec}");
            assert!(message.contains(&format!("`{spec}`")), "{message}");
            assert!(message.contains("cuda:N"), "{message}");
        }
    }

    #[test]
    fn display_round_trips_and_serde_uses_strings() {
        for request in [
            DeviceRequest::Auto,
            DeviceRequest::Cpu,
            DeviceRequest::Cuda(0),
            DeviceRequest::Cuda(7),
        ] {
            assert_eq!(
                request.to_string().parse::<DeviceRequest>().unwrap(),
                request
            );
            let json = serde_json::to_string(&request).unwrap();
            assert_eq!(json, format!("\"{request}\""));
            assert_eq!(
                serde_json::from_str::<DeviceRequest>(&json).unwrap(),
                request
            );
        }
        let error = serde_json::from_str::<DeviceRequest>("\"tpu\"").unwrap_err();
        assert!(error.to_string().contains("`tpu`"), "{error}");
    }

    #[test]
    fn library_directory_is_read_from_a_maps_listing() {
        let maps = "\
7f00-7f10 r--p 00000000 fd:01 11 /usr/lib/x86_64-linux-gnu/libc.so.6
7f20-7f30 r-xp 00001000 fd:01 12 /home/a b/.libtorch/torch/lib/libtorch_cpu.so
7f40-7f50 rw-p 00000000 00:00 0 
7f60-7f70 r--p 00000000 fd:01 13 /opt/libtorch_cpu.so.bak
";
        assert_eq!(
            loaded_library_dir(maps, CPU_LIBRARY),
            Some(PathBuf::from("/home/a b/.libtorch/torch/lib"))
        );
        assert_eq!(loaded_library_dir(maps, CUDA_LIBRARY), None);
        assert_eq!(loaded_library_dir("", CPU_LIBRARY), None);
    }

    #[test]
    fn torch_version_is_read_from_wheel_or_zip_layouts() {
        let root = std::env::temp_dir().join(format!("lm-version-{}", std::process::id()));
        let lib = root.join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        assert_eq!(recorded_torch_version(&lib), None);
        std::fs::write(root.join("build-version"), "2.11.0+cpu\n").unwrap();
        assert_eq!(recorded_torch_version(&lib).as_deref(), Some("2.11.0+cpu"));
        std::fs::write(root.join("version.py"), "__version__ = '2.11.0+cu130'\n").unwrap();
        assert_eq!(
            recorded_torch_version(&lib).as_deref(),
            Some("2.11.0+cu130")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn runtime_describes_the_libtorch_we_linked() {
        let runtime = runtime();
        let dir = runtime
            .libtorch_dir
            .as_ref()
            .expect("libtorch_cpu.so is mapped");
        assert!(dir.join(CPU_LIBRARY).is_file());
        let version = runtime
            .torch_version
            .as_deref()
            .expect("a recorded version");
        assert!(version.starts_with("2.11.0"), "{version}");
        assert!(runtime.cpu_threads >= 1);
        // SAFETY: opening the driver library runs no GPU code (as in `load_cuda_library`).
        let driver = unsafe {
            libloading::os::unix::Library::open(
                Some(DRIVER_LIBRARY),
                libloading::os::unix::RTLD_NOW,
            )
        }
        .is_ok();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapped = loaded_library_dir(&maps, CUDA_LIBRARY);
        if dir.join(CUDA_LIBRARY).is_file() && driver {
            // The wheel ships the CUDA library and there is a driver: it must have been
            // loaded, and be mapped now.
            assert_eq!(
                runtime.cuda_library,
                CudaLibrary::Loaded {
                    path: dir.join(CUDA_LIBRARY)
                }
            );
            assert_eq!(mapped.as_deref(), Some(dir.as_path()));
        } else if dir.join(CUDA_LIBRARY).is_file() {
            // No driver: the CUDA libraries stay out of the process.
            assert!(
                matches!(runtime.cuda_library, CudaLibrary::NoDriver { .. }),
                "{:?}",
                runtime.cuda_library
            );
            assert_eq!(mapped, None);
            assert!(!runtime.cuda_available);
            assert!(
                runtime
                    .cuda_unavailable_reason()
                    .contains("no NVIDIA driver")
            );
        }
        if runtime.cuda_available {
            assert!(runtime.cuda_device_count >= 1);
        } else {
            assert_eq!(runtime.cuda_device_count, 0);
            assert!(!runtime.cudnn_available);
        }
        let report = runtime.to_string();
        assert!(report.contains(version), "{report}");
    }

    #[test]
    fn resolution_follows_what_the_runtime_sees() {
        let runtime = runtime();
        assert_eq!(resolve(DeviceRequest::Cpu).unwrap(), Device::Cpu);
        let auto = resolve(DeviceRequest::Auto).unwrap();
        assert_eq!(auto.is_cuda(), runtime.cuda_available);
        let beyond = DeviceRequest::Cuda(runtime.cuda_device_count);
        if runtime.cuda_available {
            assert_eq!(resolve(DeviceRequest::Cuda(0)).unwrap(), Device::Cuda(0));
            assert!(matches!(
                resolve(beyond),
                Err(Error::CudaDeviceOutOfRange { .. })
            ));
        } else {
            let error = resolve(DeviceRequest::Cuda(0)).unwrap_err();
            assert!(matches!(error, Error::CudaUnavailable { .. }), "{error:?}");
            assert!(error.to_string().contains("cuda:0"), "{error}");
        }
    }

    #[test]
    fn a_tensor_runs_on_the_resolved_device() {
        let device = resolve(DeviceRequest::Auto).unwrap();
        let x = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(device);
        let total = (&x * &x).sum(tch::Kind::Float).double_value(&[]);
        assert_eq!(total, 14.0);
    }
}
