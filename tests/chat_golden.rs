//! Chat templates rendered by inferneo equal HuggingFace's `apply_chat_template` output
//! (tests/data/chat_templates.json, written by tools/reference/chat_templates.py), string for
//! string, for every template and conversation there, including the ones a template refuses.

use inferneo_runtime::chat::{gpt2_specials, ChatMessage, ChatTemplate};
use std::path::Path;

#[test]
fn rendered_prompts_equal_huggingface() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/data/chat_templates.json")).unwrap()).unwrap();
    let templates = fixture["templates"].as_object().unwrap();
    assert!(templates.len() >= 4, "fixture has {} templates", templates.len());
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let source = std::fs::read_to_string(root.join(templates[name].as_str().unwrap())).unwrap();
        let template = ChatTemplate::new(source, gpt2_specials()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let got = template.render(&messages, case["add_generation_prompt"].as_bool().unwrap());
        match (case.get("rendered"), got) {
            (Some(want), Ok(got)) => assert_eq!(got, want.as_str().unwrap(), "{name}: {messages:?}"),
            (None, Err(e)) => {
                let want = case["error"].as_str().unwrap();
                assert!(e.to_string().contains(want), "{name}: error {e} should contain {want}");
            }
            (want, got) => panic!("{name}: {messages:?}: HF gave {want:?}, inferneo {got:?}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 48);
}

#[test]
fn the_shipped_plain_template_compiles_with_gpt2_tokens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = ChatTemplate::from_file(&root.join("assets/chat-templates/plain.jinja"), None).unwrap();
    // Roles outside system/user/assistant are refused by name.
    let e = t.render(&[ChatMessage::new("tool", "x")], true).unwrap_err();
    assert!(e.to_string().contains("not 'tool'"), "{e}");
}
