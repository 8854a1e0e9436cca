//! Which instruction sets this CPU offers, and which one the user asked for.
//!
//! Uses `is_x86_feature_detected!`, which also checks that the OS saves the wide registers.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Environment variable that forces an ISA: `scalar`, `avx2`, `avx512` or `auto` (default).
pub const ISA_ENV: &str = "INFERNEO_ISA";

/// An instruction set the kernels are instantiated for, slowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether the running CPU can execute this ISA's kernels.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::simd::avx2::Avx2::detect().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => crate::simd::avx512::Avx512::detect().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The best ISA this CPU supports.
    pub fn best() -> Isa {
        Isa::ALL.into_iter().rev().find(|i| i.available()).unwrap_or(Isa::Scalar)
    }

    /// The ISA requested by [`ISA_ENV`], or the best one when unset or `auto`.
    /// Errors if the variable names an unknown ISA or one this CPU lacks, so a test run that
    /// forces an ISA can never silently exercise another.
    pub fn from_env() -> Result<Isa, String> {
        match std::env::var(ISA_ENV) {
            Err(_) => Ok(Isa::best()),
            Ok(v) if v.is_empty() || v == "auto" => Ok(Isa::best()),
            Ok(v) => {
                let isa: Isa = v.parse().map_err(|e| format!("{ISA_ENV}: {e}"))?;
                if isa.available() {
                    Ok(isa)
                } else {
                    Err(format!("{ISA_ENV}={v}: this CPU does not support {}", isa.name()))
                }
            }
        }
    }
}

impl FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| format!("unknown ISA '{s}' (expected one of: scalar, avx2, avx512, auto)"))
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Threads to run the kernels on by default: one per physical core this process may use
/// (SMT siblings share a core's FMA units, so a second thread per core adds chunks and
/// synchronisation, not arithmetic; llama.cpp, ONNX Runtime and PyTorch default the same way;
/// not measured here, as neither machine this was built on has SMT), and no more than
/// `available_parallelism` (which also counts cgroup CPU quotas).
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads_for(logical, physical_cores())
}

fn threads_for(logical: usize, physical: Option<usize>) -> usize {
    physical.map_or(logical, |p| p.min(logical)).max(1)
}

/// Distinct physical cores (package, core) among the CPUs this process may run on, from
/// Linux's `/proc` and `/sys`; `None` where they cannot be read. CPUs without a readable
/// topology (offline ones, which an affinity mask may still list) are not counted.
pub fn physical_cores() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    let read = |cpu: usize, file: &str| {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/{file}");
        std::fs::read_to_string(path).ok().map(|v| v.trim().to_owned())
    };
    let cores: HashSet<(String, String)> = parse_cpu_list(allowed)?
        .into_iter()
        .filter_map(|cpu| Some((read(cpu, "physical_package_id")?, read(cpu, "core_id")?)))
        .collect();
    (!cores.is_empty()).then_some(cores.len())
}

/// The CPUs of a Linux CPU list such as `0-3,8,10-11`; `None` if it is malformed.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_linux_writes_them() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
    }

    #[test]
    fn threads_are_physical_cores_within_the_allowed_cpus() {
        assert_eq!(threads_for(32, Some(16)), 16);
        // A cgroup quota below the core count wins; an unreadable topology keeps every CPU.
        assert_eq!(threads_for(4, Some(16)), 4);
        assert_eq!(threads_for(8, None), 8);
        assert_eq!(threads_for(1, Some(0)), 1);
    }

    #[test]
    fn the_default_is_within_the_available_cpus() {
        let logical = std::thread::available_parallelism().unwrap().get();
        match physical_cores() {
            Some(cores) => assert_eq!(default_threads(), cores.min(logical)),
            None => {
                eprintln!("NOTICE: no readable CPU topology here: the default is every available CPU");
                assert_eq!(default_threads(), logical);
            }
        }
    }
}
