//! Workspace-level test and benchmark package; the product lives in the member crates.
