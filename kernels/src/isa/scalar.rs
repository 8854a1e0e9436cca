//! Scalar instantiation: runs everywhere; the dispatch fallback.

super::instantiate!(token: crate::simd::scalar::Scalar);
