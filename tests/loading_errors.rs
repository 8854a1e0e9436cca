//! Every way a model directory can be wrong gives an error naming the file and the problem, and
//! every supported storage dtype loads to the same model.

use inferneo_runtime::init::{self, StoreDtype};
use inferneo_runtime::{Gpt2, KvCache, Logits, Preset, WeightDtype};
use std::path::Path;

fn tiny_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init::write_model_dir(dir.path(), &Preset::Tiny.config(), 1, StoreDtype::F32).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match Gpt2::load(dir, inferneo_kernels::kernels().unwrap(), WeightDtype::F32) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error is not one line: {msg}");
            msg
        }
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites model.safetensors with `edit` applied to the (name, dtype, shape, bytes) list.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut list);
    let views: Vec<_> = list
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn missing_files() {
    let dir = tiny_dir();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("No such file"), "{msg}");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json") && msg.contains("No such file"), "{msg}");
}

#[test]
fn malformed_json() {
    let dir = tiny_dir();
    std::fs::write(dir.path().join("config.json"), "{\"n_embd\": 64,").unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json") && msg.contains("malformed JSON"), "{msg}");
}

#[test]
fn unsupported_architecture_and_activation() {
    let dir = tiny_dir();
    edit_config(dir.path(), |v| v["model_type"] = "llama".into());
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json") && msg.contains("model_type 'llama'"), "{msg}");
    edit_config(dir.path(), |v| {
        v["model_type"] = "gpt2".into();
        v["architectures"] = serde_json::json!(["BertModel"]);
    });
    assert!(load_err(dir.path()).contains("BertModel"));
    edit_config(dir.path(), |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        v["activation_function"] = "relu".into();
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("activation_function 'relu'"), "{msg}");
    edit_config(dir.path(), |v| {
        v["activation_function"] = "gelu_new".into();
        v["n_head"] = 5.into();
    });
    assert!(load_err(dir.path()).contains("not divisible by n_head"));
}

#[test]
fn unknown_fields_and_n_ctx_are_accepted() {
    let dir = tiny_dir();
    edit_config(dir.path(), |v| {
        v["dtype"] = "float32".into();
        v["n_ctx"] = 128.into();
        v["some_future_field"] = serde_json::json!({"nested": [1, 2]});
    });
    Gpt2::load(dir.path(), inferneo_kernels::kernels().unwrap(), WeightDtype::F32).unwrap();
}

#[test]
fn missing_tensor_and_wrong_shape() {
    let dir = tiny_dir();
    edit_tensors(dir.path(), |l| l.retain(|t| t.0 != "transformer.h.1.mlp.c_fc.bias"));
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("missing tensor 'h.1.mlp.c_fc.bias'"), "{msg}");

    let dir = tiny_dir();
    edit_tensors(dir.path(), |l| {
        let t = l.iter_mut().find(|t| t.0 == "transformer.h.0.attn.c_attn.weight").unwrap();
        t.2 = vec![192, 64]; // transposed, as an nn.Linear checkpoint would store it
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("h.0.attn.c_attn.weight") && msg.contains("[192, 64]") && msg.contains("[64, 192]"), "{msg}");
}

#[test]
fn unsupported_dtype() {
    let dir = tiny_dir();
    edit_tensors(dir.path(), |l| {
        let t = l.iter_mut().find(|t| t.0 == "transformer.ln_f.bias").unwrap();
        t.1 = safetensors::Dtype::I32;
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("ln_f.bias") && msg.contains("unsupported dtype I32"), "{msg}");
}

#[test]
fn truncated_safetensors() {
    let dir = tiny_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("invalid safetensors"), "{msg}");
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert!(load_err(dir.path()).contains("invalid safetensors"));
}

#[test]
fn pytorch_bin_only_is_explained() {
    let dir = tiny_dir();
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join("pytorch_model.bin")).unwrap();
    assert!(load_err(dir.path()).contains("only model.safetensors is supported"));
}

/// f16 and bf16 checkpoints load to exactly the f32 model with the same (rounded) values.
#[test]
fn f16_and_bf16_checkpoints_equal_f32_of_the_rounded_values() {
    let kernels = inferneo_kernels::kernels().unwrap();
    let logits = |dir: &Path| {
        let m = Gpt2::load(dir, kernels, WeightDtype::F32).unwrap();
        let mut c = KvCache::new(m.config());
        m.forward_one(&mut c, &[464, 2068, 7586, 21831], Logits::All).unwrap()
    };
    for (dtype, round) in [
        (StoreDtype::F16, (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32),
        (StoreDtype::Bf16, |x: f32| half::bf16::from_f32(x).to_f32()),
    ] {
        let half_dir = tempfile::tempdir().unwrap();
        init::write_model_dir(half_dir.path(), &Preset::Tiny.config(), 2, dtype).unwrap();
        let f32_dir = tempfile::tempdir().unwrap();
        init::write_model_dir(f32_dir.path(), &Preset::Tiny.config(), 2, StoreDtype::F32).unwrap();
        edit_tensors(f32_dir.path(), |l| {
            for t in l.iter_mut() {
                t.3 =
                    t.3.chunks_exact(4)
                        .flat_map(|b| round(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
                        .collect();
            }
        });
        assert_eq!(logits(half_dir.path()), logits(f32_dir.path()), "{dtype:?}");
    }
}

/// A checkpoint rewritten while it loads: read (not mapped), a truncated file is an error
/// naming the tensor rather than a SIGBUS, and a file whose size or modification time changed
/// since it was opened is refused rather than loaded as a mix of two versions.
#[test]
fn a_file_changed_while_loading_is_refused() {
    use inferneo_runtime::weights::{SafetensorsFile, WeightSource};
    let dir = tiny_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let e = Preset::Tiny.config().n_embd;

    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.get("ln_f.weight", &[e]).unwrap().len(), e);
    file.check_unchanged().unwrap();
    // Truncated in place (as `cp` over an existing file does), keeping only the header.
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    std::fs::write(&path, &bytes[..header_end]).unwrap();
    let msg = file.get("wte.weight", &[50257, e]).unwrap_err().to_string();
    assert!(msg.contains("ends inside tensor") && msg.contains("wte.weight"), "{msg}");
    assert!(file.check_unchanged().unwrap_err().to_string().contains("changed while it was being loaded"));

    // Same length, new contents: only the modification time tells.
    std::fs::write(&path, &bytes).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
    assert!(file.check_unchanged().unwrap_err().to_string().contains("changed while it was being loaded"));
    // Replaced by a rename, the open file is the old one, whole: nothing to refuse.
    std::fs::write(&path, &bytes).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let fresh = dir.path().join("fresh.safetensors");
    std::fs::write(&fresh, &bytes[..header_end]).unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    assert_eq!(file.get("wte.weight", &[50257, e]).unwrap().len(), 50257 * e);
    file.check_unchanged().unwrap();
}
