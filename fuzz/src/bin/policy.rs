//! Policy files: any text gives policies and diagnostics with a place in the text, never a
//! panic, and a set that parses renders diagnostics whose line exists.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (policies, diags) = memscale::policy::parse::parse_policy_text("fuzz.toml", text);
        let lines = text.lines().count().max(1);
        for d in &diags {
            assert!(
                d.line >= 1 && d.line <= lines + 1,
                "{d} outside the text ({lines} lines)"
            );
            let _ = d.to_string();
        }
        for p in &policies {
            assert!(!p.name.is_empty() || !diags.is_empty());
        }
    });
}
