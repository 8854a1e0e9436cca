//! Which instruction sets this CPU offers, and which one the user asked for.
//!
//! Uses `is_x86_feature_detected!`, which also checks that the OS saves the wide registers.

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
