//! The parts of the `inferneo` command that other crates reuse: the roofline measurement
//! (`inferneo roofline`, and `inferneo.kernels.roofline()` in the Python package).
#![forbid(unsafe_code)]

pub mod roofline;
