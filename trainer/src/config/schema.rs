//! The JSON Schema of the config file (`kiln schema`), also used to suggest keys.

use serde_json::Value;

/// JSON Schema (draft 2020-12) of [`super::FileConfig`].
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(super::FileConfig)).expect("a schema is plain JSON")
}

/// The keys a table at `path` accepts, following `$ref`s, arrays and `anyOf`/`oneOf` variants.
pub fn known_keys(schema: &Value, path: &[String]) -> Vec<String> {
    let mut nodes = vec![schema];
    for part in path {
        let mut next = Vec::new();
        for node in expand(schema, nodes) {
            if let Some(p) = node.get("properties").and_then(|p| p.get(part.as_str())) {
                next.push(p);
            } else if part.parse::<usize>().is_ok()
                && let Some(items) = node.get("items")
            {
                next.push(items);
            }
        }
        nodes = next;
    }
    let mut keys: Vec<String> = expand(schema, nodes)
        .into_iter()
        .filter_map(|n| n.get("properties").and_then(Value::as_object))
        .flat_map(|p| p.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Resolves `$ref`, `anyOf`, `oneOf` and `allOf` into the schemas behind them.
fn expand<'a>(root: &'a Value, nodes: Vec<&'a Value>) -> Vec<&'a Value> {
    let mut out = Vec::new();
    let mut stack = nodes;
    let mut guard = 0;
    while let Some(n) = stack.pop() {
        guard += 1;
        if guard > 1000 {
            break;
        }
        if let Some(r) = n.get("$ref").and_then(Value::as_str)
            && let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p))
        {
            stack.push(target);
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            if let Some(list) = n.get(k).and_then(Value::as_array) {
                stack.extend(list.iter());
            }
        }
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_follow_refs_and_arrays() {
        let s = schema();
        let top = known_keys(&s, &[]);
        assert!(top.contains(&"optim".to_string()) && top.contains(&"data".to_string()));
        let optim = known_keys(&s, &["optim".into()]);
        assert!(optim.contains(&"lr".to_string()));
        let conv = known_keys(&s, &["model".into(), "conv".into(), "0".into()]);
        assert!(conv.contains(&"channels".to_string()), "{conv:?}");
        let split = known_keys(&s, &["data".into(), "split".into()]);
        assert!(split.contains(&"stratify".to_string()));
    }
}
