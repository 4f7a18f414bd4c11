//! Keeps `src/lib.rs` true: each module uses only the modules declared above it. Reads every file under
//! `src/`, drops comments, string literals and `#[cfg(test)]` items (tests may use anything), and checks
//! every `crate::…` path that is left, including `use crate::{a::…, b}` groups and full paths in code.
//! Also checks that the flow line in the crate docs lists the modules in their declared order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Modules that lib.rs declares only for tests (`#[cfg(test)] mod name;`): like test items, they may use
/// anything.
fn test_only_modules(lib: &str) -> Vec<String> {
    let lines: Vec<&str> = lib.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) else { continue };
        let attrs = lines[..i].iter().rev().take_while(|p| p.starts_with("#[") || p.starts_with("//"));
        if attrs.into_iter().any(|p| *p == "#[cfg(test)]") {
            out.push(name.to_string());
        }
    }
    out
}

/// True when the file `rel` (relative to src/) is a module that its parent file declares only for tests,
/// like `ops/attention/tests.rs` under `#[cfg(test)] mod tests;` in `ops/attention/mod.rs`, or lies below one.
fn is_test_only_file(rel: &Path) -> bool {
    let mut names: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
    let last = names.pop().unwrap_or_default();
    let stem = last.strip_suffix(".rs").unwrap_or(&last);
    if stem != "mod" {
        names.push(stem.to_string());
    }
    (1..names.len()).any(|k| {
        let dir: PathBuf = names[..k].iter().collect();
        [src().join(&dir).join("mod.rs"), src().join(dir.with_extension("rs"))]
            .into_iter()
            .find_map(|parent| std::fs::read_to_string(parent).ok())
            .is_some_and(|text| test_only_modules(&text).contains(&names[k]))
    })
}

/// `pub mod name;` lines of lib.rs, in order.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_string)).collect()
}

/// Names lib.rs re-exports at the root (`pub use error::{Error, Result};`) → the module they come from.
fn root_reexports(lib: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for l in lib.lines() {
        let Some(rest) = l.trim().strip_prefix("pub use ").and_then(|r| r.strip_suffix(';')) else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = item.trim().rsplit(" as ").next().unwrap_or("").trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The source with comments and string/char literals blanked out (newlines kept).
fn strip_comments_and_literals(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&b, i) {
            // raw string r"…" / r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' && is_char_literal(&b, i) {
            // 'x', '\n', '\'', '{' (a lifetime like 'a has no closing quote right after)
            let mut j = i + 1;
            if b.get(j) == Some(&'\\') {
                j += 1;
            }
            j += 1;
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

fn is_char_literal(b: &[char], i: usize) -> bool {
    matches!((b.get(i + 1), b.get(i + 2)), (Some('\\'), _) | (Some(_), Some('\'')))
}

/// Remove every item marked `#[cfg(test)]` (a `mod tests { … }`, a helper fn, a `use`).
fn strip_test_items(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        // the item ends at its first `;` before any `{`, or at the brace matching its first `{`
        let (semi, brace) = (item.find(';'), item.find('{'));
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, ch) in item[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        out.extend(item[..end].chars().filter(|&c| c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// First path segment of every `crate::…` in `code`, with its line number.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (ln, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before_ok = rest[..at].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let after = &rest[at + "crate::".len()..];
            if before_ok {
                if let Some(group) = after.strip_prefix('{') {
                    // `crate::{a::x, b}`: the first segment of each top-level entry (one line)
                    let mut depth = 0;
                    let mut start = true;
                    for (k, ch) in group.char_indices() {
                        match ch {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => start = true,
                            c if start && (c.is_alphanumeric() || c == '_') => {
                                let name: String =
                                    group[k..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                                out.push((ln + 1, name));
                                start = false;
                            }
                            _ => {}
                        }
                    }
                } else {
                    let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    out.push((ln + 1, name));
                }
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn each_module_uses_only_the_modules_declared_above_it() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let modules = declared_modules(&lib);
    assert!(modules.len() > 5, "found only {modules:?} in lib.rs");
    let rank: HashMap<&str, usize> = modules.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let reexports = root_reexports(&lib);
    let test_only = test_only_modules(&lib);
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src()).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if module == "lib" || test_only.contains(&module) || is_test_only_file(rel) {
            continue;
        }
        let Some(&own) = rank.get(module.as_str()) else {
            wrong.push(format!("{}: module `{module}` is not declared in lib.rs", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = strip_test_items(&strip_comments_and_literals(&text));
        for (line, name) in crate_paths(&code) {
            let target = reexports.get(&name).cloned().unwrap_or(name.clone());
            match rank.get(target.as_str()) {
                Some(&r) if r <= own => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: `{module}` uses `crate::{name}` (module `{target}`), declared after it",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "{}:{line}: `crate::{name}` is neither a module nor a root re-export",
                    rel.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "the flow in src/lib.rs is not true of the code:\n{}", wrong.join("\n"));
}

#[test]
fn the_flow_line_in_the_crate_docs_lists_the_modules_in_declared_order() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let modules = declared_modules(&lib);
    let flow = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .find(|l| l.contains(" → "))
        .expect("a flow line `a → b → …` in the crate docs");
    let named: Vec<String> = flow
        .split(" → ")
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        .take_while(|s| modules.contains(s))
        .collect();
    assert_eq!(named, modules, "flow line `{flow}` vs the `pub mod` order of lib.rs");
}

#[test]
fn the_checker_sees_what_it_must() {
    // a path in code counts; one in a comment, a string or a test module does not
    let code = "use crate::ops::x;\n// crate::nn\nlet s = \"crate::models\";\n#[cfg(test)]\nmod tests {\n    use crate::bindings::y;\n}\nfn f() { crate::{tensor::T, error}; }\n";
    let cleaned = strip_test_items(&strip_comments_and_literals(code));
    let names: Vec<String> = crate_paths(&cleaned).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["ops", "tensor", "error"]);
    // a file declared `#[cfg(test)] mod tests;` by its parent is a test module; its siblings are not
    assert!(is_test_only_file(Path::new("ops/attention/tests.rs")));
    assert!(!is_test_only_file(Path::new("ops/attention/kernels.rs")));
    assert!(!is_test_only_file(Path::new("ops/attention/mod.rs")));
}
