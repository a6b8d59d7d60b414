//! Choosing the compute device: `auto`, `cpu`, `cuda[:N]` or `metal`.

use candle_core::Device;

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when one is compiled in and present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// The Metal GPU.
    Metal,
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "expected auto, cpu, cuda, cuda:N or metal, got `{other}`"
                )),
            },
        }
    }

    /// Opens the device; `auto` never fails and falls back to the CPU.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                Device::new_cuda(n).map_err(|e| anyhow::anyhow!("cannot open CUDA device {n}: {e}"))
            }
            Self::Metal => {
                Device::new_metal(0).map_err(|e| anyhow::anyhow!("cannot open Metal device: {e}"))
            }
            Self::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                }
                if candle_core::utils::metal_is_available() {
                    if let Ok(d) = Device::new_metal(0) {
                        return Ok(d);
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// A short human name for a device, as shown in the status bar.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Runs candle's element-wise CPU ops on the calling thread unless `CANDLE_NUM_THREADS` says
/// otherwise. Call it first thing in `main`, before any other thread starts.
///
/// candle's pool for element-wise ops waits for its workers by spinning. When the cores are
/// shared (the studio beside its trainer, a second job, two cores in all) a descheduled worker
/// turns that wait into whole time slices of spinning: the Frey Face MLP trained about twice
/// as fast on two busy cores with the pool off, and the convolutional model no slower on quiet
/// ones, since its heavy layers run on rayon and gemm, which this leaves alone.
pub fn tune_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keeps freed memory in the process for reuse instead of handing it back to the kernel.
/// Call it first thing in `main`.
///
/// A training step frees and allocates the same large tensors every time. glibc serves blocks
/// over its mmap threshold with fresh mappings and trims the heap's free top, so by default each
/// step faults every page of them in again and the kernel zero-fills it: about a tenth of a
/// step's time on two cores. The highest threshold glibc accepts (32 MiB on 64-bit) covers every
/// tensor of the default models, and trimming only past 1 GiB keeps the freed ones around.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(DeviceChoice::parse("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::parse("cuda:2"), Ok(DeviceChoice::Cuda(2)));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert!(DeviceChoice::parse("tpu").is_err());
        assert!(DeviceChoice::parse("cuda:x").is_err());
    }

    #[test]
    fn auto_falls_back_to_a_working_device() {
        let device = DeviceChoice::Auto.open().unwrap();
        assert!(!describe(&device).is_empty());
    }
}
