//! Shared helpers for the integration tests: golden files from `tools/reference/hf_reference.py`
//! and the comparison that reports where and by how much logits differ.
#![allow(dead_code)]

use inferneo_kernels::{Isa, Kernels};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::PathBuf;

/// Max abs logit difference allowed against HuggingFace fp32.
pub const LOGIT_TOL: f32 = 1e-4;

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub struct Golden {
    pub meta: HashMap<String, String>,
    pub tokens: Vec<u32>,
    /// `[tokens.len(), vocab]`: HF's logits at the vocabulary ids `columns` names (every id when
    /// it is `None`).
    pub logits: Vec<f32>,
    /// The row length of `logits`: the model's vocabulary, or `columns.len()`.
    pub vocab: usize,
    /// The vocabulary ids kept, ascending, when the fixture keeps only some (to stay small).
    pub columns: Option<Vec<usize>>,
    pub greedy: Vec<u32>,
    pub greedy_margin: Vec<f32>,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let path = data_dir().join(format!("golden-{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("golden header");
        let meta = header.metadata().clone().unwrap_or_default();
        assert_eq!(meta.get("format").map(String::as_str), Some("inferneo-golden"), "{}", path.display());
        // Version 2 adds the optional `logit_columns`.
        let version = meta.get("version").map(String::as_str);
        assert!(matches!(version, Some("1" | "2")), "{}: unsupported version {version:?}", path.display());
        let st = SafeTensors::deserialize(&bytes).expect("golden tensors");
        let i64s = |n: &str| -> Vec<u32> {
            st.tensor(n)
                .unwrap()
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                .collect()
        };
        let f32s = |n: &str| -> Vec<f32> {
            st.tensor(n).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
        };
        let vocab = st.tensor("logits").unwrap().shape()[1];
        let columns = st.tensor("logit_columns").is_ok().then(|| {
            let c: Vec<usize> = i64s("logit_columns").into_iter().map(|i| i as usize).collect();
            assert_eq!(c.len(), vocab, "{}: logit_columns and logits disagree", path.display());
            assert!(c.windows(2).all(|w| w[0] < w[1]), "{}: logit_columns not ascending", path.display());
            c
        });
        Golden {
            meta,
            tokens: i64s("tokens"),
            logits: f32s("logits"),
            vocab,
            columns,
            greedy: i64s("greedy"),
            greedy_margin: f32s("greedy_margin"),
        }
    }

    /// `full` (`[rows, full_vocab]` logits of ours) cut to the golden's columns, so that it
    /// compares with `self.logits` row for row.
    pub fn select(&self, full: &[f32], full_vocab: usize) -> Vec<f32> {
        match &self.columns {
            None => full.to_vec(),
            Some(cols) => full.chunks(full_vocab).flat_map(|row| cols.iter().map(|&c| row[c])).collect(),
        }
    }

    /// [`check_logits`] of `full` (ours, every vocabulary column) against the golden. Where the
    /// golden keeps only some columns, each of our full rows' argmax must also be HF's (HF's
    /// argmax is among the columns kept: the reference script keeps each row's highest logits).
    pub fn check(&self, label: &str, full: &[f32], full_vocab: usize, tol: f32) -> f32 {
        let diff = check_logits(label, &self.select(full, full_vocab), &self.logits, self.vocab, tol);
        if let Some(cols) = &self.columns {
            for (row, (ours, hf)) in full.chunks(full_vocab).zip(self.logits.chunks(self.vocab)).enumerate() {
                let (o, h) = (argmax(ours), cols[argmax(hf)]);
                assert_eq!(o, h, "{label}: position {row}: argmax over the whole vocabulary {o} differs from HF's {h}");
            }
        }
        diff
    }

    pub fn seed(&self) -> u64 {
        self.meta["seed"].parse().unwrap()
    }
}

/// Index of the largest value, the first on ties: a plain loop, independent of the kernels.
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Compares `[rows, vocab]` logits with the golden: max abs diff within `tol` at every position
/// and identical argmax. Panics at the first failing row with its index, the first few pairs and
/// the max diff; returns the max abs diff.
pub fn check_logits(label: &str, got: &[f32], want: &[f32], vocab: usize, tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{label}: logits length");
    let mut worst = 0.0f32;
    for (row, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
        let (idx, diff) = g.iter().zip(w).map(|(a, b)| (a - b).abs()).enumerate().fold((0, 0.0f32), |best, (i, d)| {
            if d > best.1 || d.is_nan() {
                (i, d)
            } else {
                best
            }
        });
        worst = worst.max(diff);
        let pairs: Vec<String> = g.iter().zip(w).take(4).map(|(a, b)| format!("({a:.6}, {b:.6})")).collect();
        assert!(
            diff <= tol,
            "{label}: position {row}: max abs diff {diff:.3e} at vocab index {idx} (ours {}, HF {}) exceeds {tol:.0e}; first pairs {}",
            g[idx],
            w[idx],
            pairs.join(" ")
        );
        let (ga, wa) = (argmax(g), argmax(w));
        assert_eq!(ga, wa, "{label}: position {row}: argmax {ga} differs from HF's {wa}");
    }
    worst
}

/// Every ISA this CPU can run, announcing the ones it cannot (so a skip is never silent).
pub fn available_kernels() -> Vec<Kernels> {
    Isa::ALL
        .into_iter()
        .filter_map(|isa| {
            let k = Kernels::for_isa(isa);
            if k.is_none() {
                eprintln!("NOTICE: skipping ISA {isa}: not supported by this CPU");
            }
            k
        })
        .collect()
}

/// How far one model's logits are from a reference's: max abs difference, top-1 agreement
/// and mean KL(reference || got) over the rows.
pub struct Quality {
    pub max_abs: f32,
    pub top1: f64,
    pub mean_kl: f64,
}

/// log-softmax of `row`, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// [`Quality`] of `got` against `reference`, both `[rows, vocab]`.
pub fn compare(reference: &[f32], got: &[f32], vocab: usize) -> Quality {
    let rows = reference.len() / vocab;
    let (mut max_abs, mut agree, mut kl) = (0.0f32, 0usize, 0.0f64);
    for (r, g) in reference.chunks(vocab).zip(got.chunks(vocab)) {
        max_abs = r.iter().zip(g).fold(max_abs, |m, (a, b)| m.max((a - b).abs()));
        agree += (argmax(r) == argmax(g)) as usize;
        let (lp, lq) = (log_softmax(r), log_softmax(g));
        kl += lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum::<f64>();
    }
    Quality { max_abs, top1: agree as f64 / rows as f64, mean_kl: kl / rows as f64 }
}
