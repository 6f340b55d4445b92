//! The architecture's rules, checked by reading the source tree (see
//! ARCHITECTURE.md, "Layers and rules"). Each rule names the file and the
//! line of code that breaks it. The checker's own tests at the bottom feed it
//! small trees that break each rule, so a check that cannot fail fails here.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Library crates: no socket is bound in them, outside tests.
const LIBRARIES: &[&str] = &["proto", "certs", "telemetry", "node", "gateway"];
/// Crates whose files must not import each other in a circle.
const ACYCLIC: &[&str] = &["proto", "certs", "telemetry", "node", "gateway", "cli"];

/// The node's layers: a module (the longest matching prefix) may import only
/// itself and the modules listed. `lib` and `server` are the top and may
/// import anything.
const NODE_LAYERS: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("catalog", &["error"]),
    ("kv", &["error", "catalog::model"]),
    ("audit", &["error", "kv"]),
    ("booking", &["error", "kv", "audit", "catalog::model", "money::payment", "money::ledger"]),
    ("money::ledger", &["error", "kv", "booking::time"]),
    ("money::payment", &["error", "money::ledger", "booking::time"]),
    ("money", &["error", "kv", "audit", "catalog::model", "booking"]),
    ("ops", &["error", "kv", "catalog", "booking", "money"]),
    ("node", &["error", "kv", "catalog", "booking", "money", "ops"]),
    ("wire", &["error", "kv", "audit", "catalog", "booking", "money", "ops", "node"]),
];

/// Where, per crate, `tonic::Status` may be built: the one adapter place.
const STATUS_BUILDERS: &[(&str, &[&str])] = &[
    ("node", &["src/wire/error.rs"]),
    ("gateway", &["src/service.rs"]),
    // The server layer that answers tonic's own OUT_OF_RANGE for an
    // oversized message RESOURCE_EXHAUSTED.
    ("telemetry", &["src/rpc.rs"]),
    ("certs", &[]),
    ("proto", &[]),
];

/// In the node, the modules that may name tonic and sled.
const NODE_TONIC: &[&str] = &["wire", "server"];
const NODE_SLED: &[&str] = &["kv", "ops::backup", "server"];

const STATUS_CONSTRUCTORS: &[&str] = &[
    "new",
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
    "with_details",
    "with_metadata",
];

/// One source file of a crate: its module path and its code with comments,
/// string contents and test items taken out.
struct File {
    /// Relative to the crate, e.g. `src/booking/time.rs`.
    path: String,
    module: Vec<String>,
    code: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the repository").to_path_buf()
}

/// The crate's non-test source files under `src/`.
fn read_crate(dir: &Path) -> Vec<File> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("src")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && p.file_name().is_some_and(|n| n != "tests.rs") {
                let rel = p.strip_prefix(dir).expect("under the crate").to_string_lossy().replace('\\', "/");
                let text = fs::read_to_string(&p).expect("readable source");
                out.push(File { module: module_of(&rel), code: strip_tests(&code_only(&text)), path: rel });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` and
/// `src/main.rs` the root.
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.strip_prefix("src/").unwrap_or(rel).trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    if parts.first().is_some_and(|p| p == "bin") {
        parts.clear();
    }
    parts
}

/// The code without comments, and with every string and char literal
/// emptied, so that braces and paths inside them do not count.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' if c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'') => {
                // A char literal; a lifetime has no closing quote.
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// The code without items marked `#[cfg(test)]`: a `mod tests;` line, or a
/// block up to its matching brace.
fn strip_tests(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let semi = after.find(';').unwrap_or(after.len());
        let brace = after.find('{').unwrap_or(after.len());
        if semi < brace {
            rest = &after[(semi + 1).min(after.len())..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (i, ch) in after.char_indices().skip(brace) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The line of `code` at byte `at`, trimmed, for messages.
fn line_at(code: &str, at: usize) -> (usize, String) {
    let line = code[..at].matches('\n').count() + 1;
    let text = code.lines().nth(line - 1).unwrap_or("").trim().to_string();
    (line, text)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Expands a use tree (`a::{b, c::{d as e, *}}`) into its paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn parse(s: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let base = prefix.len();
        let mut path = prefix;
        let mut seg = String::new();
        while *i < s.len() {
            let ch = s[*i];
            match ch {
                '{' => {
                    *i += 1;
                    loop {
                        parse(s, i, path.clone(), out);
                        if *i < s.len() && s[*i] == ',' {
                            *i += 1;
                            continue;
                        }
                        break;
                    }
                    *i += 1; // '}'
                    return;
                }
                ',' | '}' => break,
                ':' => {
                    if !seg.is_empty() {
                        path.push(std::mem::take(&mut seg));
                    }
                    *i += 1;
                }
                c if c.is_whitespace() => {
                    // `x as y`: the alias is not part of the path.
                    if !seg.is_empty() {
                        path.push(std::mem::take(&mut seg));
                    }
                    let rest: String = s[*i..].iter().collect();
                    if let Some(r) = rest.trim_start().strip_prefix("as ") {
                        let skip = rest.len() - r.trim_start().len();
                        *i += skip;
                        while *i < s.len() && is_ident(s[*i]) {
                            *i += 1;
                        }
                    } else {
                        *i += 1;
                    }
                }
                c => {
                    seg.push(c);
                    *i += 1;
                }
            }
        }
        if !seg.is_empty() {
            path.push(seg);
        }
        // Nothing after a trailing comma is not a path.
        if path.len() > base {
            out.push(path);
        }
    }
    let chars: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        parse(&chars, &mut i, Vec::new(), &mut out);
        i += 1;
    }
    out
}

/// Every path the code names: each `use` tree expanded, and `crate::…` /
/// `super::…` paths written inline; with the byte offset of each.
fn paths_in(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(found) = code[at..].find("use ") {
        let start = at + found;
        at = start + 4;
        if start > 0 && is_ident(bytes[start - 1] as char) {
            continue;
        }
        let Some(end) = code[at..].find(';') else { break };
        for p in expand_use(&code[at..at + end]) {
            out.push((start, p));
        }
    }
    for root in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(found) = code[at..].find(root) {
            let start = at + found;
            at = start + root.len();
            if start > 0 && (is_ident(bytes[start - 1] as char) || bytes[start - 1] == b':') {
                continue;
            }
            let mut end = start;
            while end < code.len() && (is_ident(bytes[end] as char) || bytes[end] == b':') {
                end += 1;
            }
            let path: Vec<String> = code[start..end].split("::").filter(|s| !s.is_empty()).map(String::from).collect();
            // `crate::a::{…}` is a use tree, read above.
            if path.len() > 1 && bytes.get(end) != Some(&b'{') {
                out.push((start, path));
            }
        }
    }
    out
}

/// The module a path from `from` names, if it is in this crate: the longest
/// prefix that is a module file.
fn resolve(path: &[String], from: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut abs: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => path[1..].to_vec(),
        Some("super") => {
            let mut base = from.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            base
        }
        Some("self") => from.iter().chain(path[1..].iter()).cloned().collect(),
        Some(first) => {
            // Edition 2018+ paths may start with a child module's name.
            let mut child = from.to_vec();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            from.iter().chain(path.iter()).cloned().collect()
        }
        None => return None,
    };
    while !abs.is_empty() {
        if modules.contains(&abs) {
            return Some(abs);
        }
        abs.pop();
    }
    Some(abs)
}

/// Import edges between files, with where each is written. The crate root
/// is the crate's front: its `mod` and `pub use` lines declare and re-export,
/// they do not import. A path to a name the root re-exports is an edge to
/// the module that defines it.
fn edges(files: &[File]) -> BTreeMap<(usize, usize), (usize, String)> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let index: BTreeMap<&Vec<String>, usize> = files.iter().enumerate().map(|(i, f)| (&f.module, i)).collect();
    let root = files.iter().find(|f| f.module.is_empty());
    let mut reexports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(f) = root {
        for (at, path) in paths_in(&f.code) {
            if f.code[..at].trim_end().ends_with("pub")
                && let Some(target) = resolve(&path, &f.module, &modules)
                && !target.is_empty()
            {
                reexports.insert(path.last().cloned().unwrap_or_default(), target);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        for (at, path) in paths_in(&f.code) {
            if f.module.is_empty() && f.code[..at].trim_end().ends_with("pub") {
                continue;
            }
            let Some(mut target) = resolve(&path, &f.module, &modules) else { continue };
            if target.is_empty() {
                // `crate::Name`: the file that defines a re-exported name.
                let named = path.iter().find(|s| !matches!(s.as_str(), "crate" | "super" | "self"));
                if let Some(t) = named.and_then(|n| reexports.get(n)) {
                    target = t.clone();
                }
            }
            if let Some(&j) = index.get(&target)
                && j != i
            {
                let (line, text) = line_at(&f.code, at);
                out.entry((i, j)).or_insert((line, text));
            }
        }
    }
    out
}

/// Import circles: each a list of files, smallest first.
fn circles(files: &[File]) -> Vec<Vec<String>> {
    let e = edges(files);
    let n = files.len();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in e.keys() {
        next[a].push(b);
    }
    // Files that reach each other both ways are in one circle.
    let reach = |from: usize| {
        let mut seen = vec![false; n];
        let mut stack = vec![from];
        while let Some(x) = stack.pop() {
            for &y in &next[x] {
                if !seen[y] {
                    seen[y] = true;
                    stack.push(y);
                }
            }
        }
        seen
    };
    let all: Vec<Vec<bool>> = (0..n).map(reach).collect();
    let mut done = vec![false; n];
    let mut out = Vec::new();
    for a in 0..n {
        if done[a] || !all[a][a] {
            continue;
        }
        let group: Vec<usize> = (0..n).filter(|&b| all[a][b] && all[b][a]).collect();
        for &b in &group {
            done[b] = true;
        }
        let mut names = Vec::new();
        for &x in &group {
            for &y in &group {
                if let Some((line, text)) = e.get(&(x, y)) {
                    names.push(format!("{} -> {} (line {line}: {text})", files[x].path, files[y].path));
                }
            }
        }
        names.sort();
        out.push(names);
    }
    out
}

fn joined(m: &[String]) -> String {
    m.join("::")
}

fn under(module: &[String], prefix: &str) -> bool {
    let m = joined(module);
    prefix.is_empty() || m == prefix || m.starts_with(&format!("{prefix}::"))
}

/// Imports in the node that break its layers.
fn layer_breaks(files: &[File]) -> Vec<String> {
    let mut out = Vec::new();
    for ((a, b), (line, text)) in edges(files) {
        let (from, to) = (&files[a].module, &files[b].module);
        if from.is_empty() || from[0] == "server" {
            continue;
        }
        let rule = NODE_LAYERS
            .iter()
            .filter(|(m, _)| under(from, m))
            .max_by_key(|(m, _)| m.len())
            .unwrap_or_else(|| panic!("{}: module {} has no layer in NODE_LAYERS", files[a].path, joined(from)));
        let own = rule.0;
        let allowed = under(to, own) || rule.1.iter().any(|m| under(to, m));
        if !allowed {
            out.push(format!(
                "{}:{line}: {} may not import {} ({text}); its layer imports only {own} and {:?}",
                files[a].path,
                joined(from),
                if to.is_empty() { "the crate root".to_string() } else { joined(to) },
                rule.1
            ));
        }
    }
    out
}

/// Places that build a `tonic::Status` outside the allowed files.
fn status_builders(files: &[File], allowed: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| !allowed.contains(&f.path.as_str())) {
        let mut at = 0;
        while let Some(found) = f.code[at..].find("Status::") {
            let start = at + found;
            at = start + 8;
            let name: String = f.code[at..].chars().take_while(|c| is_ident(*c)).collect();
            let called = f.code[at + name.len()..].starts_with('(');
            let by_path = start == 0 || !is_ident(f.code.as_bytes()[start - 1] as char);
            if called && by_path && STATUS_CONSTRUCTORS.contains(&name.as_str()) {
                let (line, text) = line_at(&f.code, start);
                out.push(format!("{}:{line}: builds a Status outside {allowed:?}: {text}", f.path));
            }
        }
    }
    out
}

/// Lines that bind a socket.
fn binds(files: &[File]) -> Vec<String> {
    let needles = ["TcpListener::bind", "UdpSocket::bind", "UnixListener::bind", "TcpSocket::new", ".bind("];
    let mut out = Vec::new();
    for f in files {
        for n in needles {
            let mut at = 0;
            while let Some(found) = f.code[at..].find(n) {
                let start = at + found;
                at = start + n.len();
                let (line, text) = line_at(&f.code, start);
                out.push(format!("{}:{line}: binds a socket in a library: {text}", f.path));
            }
        }
    }
    out
}

/// Files of the node's modules under `prefixes` excepted, that name `word`.
fn names_outside(files: &[File], word: &str, prefixes: &[&str]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !f.module.is_empty() && !prefixes.iter().any(|p| under(&f.module, p)))
        .filter_map(|f| {
            let at = f.code.find(&format!("{word}::"))?;
            let (line, text) = line_at(&f.code, at);
            Some(format!("{}:{line}: {word} outside {prefixes:?}: {text}", f.path))
        })
        .collect()
}

fn report(what: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{what}:\n  {}", found.join("\n  "));
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    for krate in ACYCLIC {
        let files = read_crate(&repo().join(krate));
        assert!(files.len() > 1, "{krate}: no sources found");
        let found: Vec<String> = circles(&files).into_iter().map(|c| c.join("; ")).collect();
        report(&format!("import circles in {krate}/"), found);
    }
}

#[test]
fn the_node_imports_follow_its_layers() {
    report("layer breaks in node/", layer_breaks(&read_crate(&repo().join("node"))));
}

#[test]
fn statuses_are_built_only_in_the_adapter() {
    for (krate, allowed) in STATUS_BUILDERS {
        report(&format!("Status built in {krate}/"), status_builders(&read_crate(&repo().join(krate)), allowed));
    }
}

#[test]
fn library_crates_bind_no_socket() {
    for krate in LIBRARIES {
        report(&format!("sockets bound in {krate}/"), binds(&read_crate(&repo().join(krate))));
    }
}

#[test]
fn tonic_and_sled_stay_in_their_modules_of_the_node() {
    let files = read_crate(&repo().join("node"));
    report("tonic in the node's domain", names_outside(&files, "tonic", NODE_TONIC));
    report("sled in the node's domain", names_outside(&files, "sled", NODE_SLED));
}

/// The checker itself, on small trees that break each rule.
mod checker {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<File> {
        files
            .iter()
            .map(|(path, text)| File {
                path: path.to_string(),
                module: module_of(path),
                code: strip_tests(&code_only(text)),
            })
            .collect()
    }

    #[test]
    fn a_circle_through_a_third_file_is_found() {
        let files = tree(&[
            ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("src/a.rs", "use crate::b::X;"),
            ("src/b.rs", "use crate::{c::{Y, Z as W}};"),
            ("src/c.rs", "fn f() { super::a::g(); }"),
        ]);
        let found = circles(&files);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].len(), 3, "{found:?}");
    }

    #[test]
    fn imports_in_tests_comments_and_strings_do_not_count() {
        let files = tree(&[
            ("src/lib.rs", "pub mod a; pub mod b;"),
            ("src/a.rs", "use crate::b::X;"),
            (
                "src/b.rs",
                "// use crate::a;\nconst S: &str = \"crate::a::x\";\nuse crate::{c::Z};\n#[cfg(test)]\nmod tests {\n    use crate::a::Y;\n}\n",
            ),
        ]);
        assert!(circles(&files).is_empty());
    }

    #[test]
    fn a_domain_module_importing_the_adapter_breaks_a_layer() {
        let files = tree(&[
            ("src/lib.rs", "pub mod booking; pub mod wire;"),
            ("src/booking/mod.rs", "use crate::wire::convert::to_proto;"),
            ("src/wire/mod.rs", "pub mod convert;"),
            ("src/wire/convert.rs", "pub fn to_proto() {}"),
        ]);
        let found = layer_breaks(&files);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("booking may not import wire::convert"), "{found:?}");
    }

    #[test]
    fn a_status_built_outside_the_adapter_is_found() {
        let files = tree(&[
            ("src/wire/error.rs", "fn a() -> Status { Status::internal(\"x\") }"),
            ("src/wire/service.rs", "fn b() -> Status { tonic::Status::not_found(m) }\nfn c(s: Status) {}"),
            ("src/model.rs", "fn d() -> Status { Status::Available }"),
        ]);
        let found = status_builders(&files, &["src/wire/error.rs"]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("src/wire/service.rs:1:"), "{found:?}");
    }

    #[test]
    fn a_bound_socket_is_found_outside_tests_only() {
        let files = tree(&[(
            "src/health.rs",
            "async fn serve() { let l = TcpListener::bind(addr).await; }\n#[cfg(test)]\nmod t { fn x() { TcpListener::bind(a); } }",
        )]);
        let found = binds(&files);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("src/health.rs:1:"), "{found:?}");
    }

    #[test]
    fn use_trees_expand_with_aliases_and_globs() {
        let paths = expand_use("crate::{a::{b, c as d}, e::*, self}");
        let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
        assert_eq!(joined, ["crate::a::b", "crate::a::c", "crate::e::*", "crate::self"]);
    }
}
