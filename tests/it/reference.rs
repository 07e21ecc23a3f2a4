//! The book's reference pages are generated, and these tests fail when they are stale:
//! `docs/src/reference/cli.md` from the binary's own `--help` (clap), every command and
//! subcommand; `docs/src/reference/config.md` from `kiln schema` (the JSON Schema that configs
//! are checked against). `KILN_BLESS=1 scripts/test -- reference::` rewrites them.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

const GENERATED: &str = "<!-- Generated from the kiln binary by `KILN_BLESS=1 scripts/test -- \
                         reference::`; a test fails when it is stale. Do not edit by hand. -->";

/// `kiln PATH... --help`, checked to succeed.
fn help(sb: &Sandbox, path: &[&str]) -> String {
    let mut args = path.to_vec();
    args.push("--help");
    let o = sb.kiln(&args);
    assert_exit(&o, 0);
    stdout(&o)
}

/// The subcommands a help text lists under "Commands:", less `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The CLI reference: each command's help, depth first, in the order `--help` lists them.
fn cli_reference(sb: &Sandbox) -> String {
    let mut page = format!("{GENERATED}\n\n# Command-line reference\n\n");
    page += "Every command's `--help`, as this version of `kiln` prints it. The guide to them is\n";
    page += "[The command line](../cli.md).\n";
    let mut stack = vec![Vec::<String>::new()];
    while let Some(path) = stack.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(sb, &args);
        let title = std::iter::once("kiln")
            .chain(args.iter().copied())
            .collect::<Vec<_>>();
        page += &format!(
            "\n## `{}`\n\n```text\n{}\n```\n",
            title.join(" "),
            text.trim_end()
        );
        for sub in subcommands(&text).into_iter().rev() {
            let mut next = path.clone();
            next.push(sub);
            stack.push(next);
        }
    }
    page
}

/// The schema a `$ref` points at, or the value itself.
fn resolve<'a>(schema: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => &schema["$defs"][name],
        None => v,
    }
}

/// A value's type in words: `integer`, `string`, `"a" | "b"`, `number or null`, ...
fn type_of(schema: &Value, v: &Value) -> String {
    let v = resolve(schema, v);
    if let Some(values) = v["enum"].as_array() {
        return values
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    if let Some(c) = v.get("const") {
        return format!("`{c}`");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = v[key].as_array() {
            let mut kinds: Vec<String> = options.iter().map(|o| type_of(schema, o)).collect();
            kinds.dedup();
            return kinds.join(" or ");
        }
    }
    match &v["type"] {
        Value::String(t) if t == "array" => format!("array of {}", type_of(schema, &v["items"])),
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ if v["properties"].is_object() => "table".to_string(),
        _ => "any".to_string(),
    }
}

/// One line of text for a table cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The table of keys a value holds, if it is one (also when optional: `anyOf` a table or null).
fn table_of<'a>(schema: &'a Value, v: &'a Value) -> Option<&'a Value> {
    let v = resolve(schema, v);
    if v["properties"].is_object() {
        return Some(v);
    }
    ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| v[*k].as_array())
        .flatten()
        .map(|o| resolve(schema, o))
        .find(|o| o["properties"].is_object())
}

/// The rows of every key under `prefix`: its plain keys first, then each table of keys, recursed
/// into. A table is `(path, description)`, a key `("", row)`.
fn rows(schema: &Value, prefix: &str, object: &Value, out: &mut Vec<(String, String)>) {
    let Some(props) = object["properties"].as_object() else {
        return;
    };
    let path = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    let about = |prop: &Value| {
        let target = resolve(schema, prop);
        let text = prop["description"]
            .as_str()
            .or(target["description"].as_str());
        text.map(cell).unwrap_or_default()
    };
    for (key, prop) in props.iter().filter(|(_, p)| table_of(schema, p).is_none()) {
        let target = resolve(schema, prop);
        let mut line = format!("`{}` | {} | ", path(key), type_of(schema, prop));
        if let Some(d) = prop.get("default").or(target.get("default")) {
            line += &format!("`{d}`");
        }
        line += &format!(" | {}", about(prop));
        out.push((String::new(), line));
    }
    for (key, prop) in props {
        if let Some(table) = table_of(schema, prop) {
            out.push((path(key), about(prop)));
            rows(schema, &path(key), table, out);
        }
    }
}

/// The config reference: one table per section of the config file.
fn config_reference(schema: &Value) -> String {
    let mut page = format!("{GENERATED}\n\n# Config reference\n\n");
    page += "Every key of a config file, from the JSON Schema that `kiln schema` prints and that\n";
    page += "configs are checked against. The guide to them is [Configs](../configs.md).\n";
    let mut out = Vec::new();
    rows(schema, "", schema, &mut out);
    let mut open = false;
    for (section, line) in out {
        if section.is_empty() {
            if !open {
                page += "\n| key | type | default | description |\n|---|---|---|---|\n";
                open = true;
            }
            page += &format!("| {line} |\n");
        } else {
            let (depth, about) = (section.matches('.').count(), line);
            page += &format!("\n{} `[{section}]`\n", "#".repeat(2 + depth.min(2)));
            if !about.is_empty() {
                page += &format!("\n{about}\n");
            }
            open = false;
        }
    }
    page
}

/// Compares a generated page with the committed one, or rewrites it under KILN_BLESS=1.
fn check_page(relative: &str, generated: &str) {
    let path = root().join(relative);
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "{relative} is stale (first difference at line {}): run `KILN_BLESS=1 scripts/test -- \
             reference::` and commit it",
            line + 1
        );
    }
}

#[test]
fn the_cli_reference_is_what_the_binary_prints() {
    let sb = Sandbox::new();
    let page = cli_reference(&sb);
    for command in ["## `kiln train`", "## `kiln serve`", "## `kiln runs list`"] {
        assert!(page.contains(command), "{command} is in the reference");
    }
    check_page("docs/src/reference/cli.md", &page);
}

#[test]
fn the_config_reference_is_what_the_schema_says() {
    let sb = Sandbox::new();
    let o = sb.kiln(&["schema"]);
    assert_exit(&o, 0);
    let schema: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let page = config_reference(&schema);
    for key in ["`optim.lr`", "`train.epochs`", "`model.kind`"] {
        assert!(page.contains(key), "{key} is in the reference");
    }
    check_page("docs/src/reference/config.md", &page);
}

#[test]
fn the_reference_pages_are_in_the_book() {
    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    for page in ["reference/cli.md", "reference/config.md"] {
        assert!(summary.contains(page), "SUMMARY.md lists {page}");
        assert!(Path::new(&root().join("docs/src").join(page)).exists());
    }
}
