//! The raw module against the header and the library it links:
//! - every NQ_API function of the header is declared, with the same parameter names
//!   and the same types (C types translated to Rust), and nothing else is declared;
//! - every function's address resolves (the link fails otherwise);
//! - every struct of the header is declared with the same fields in the same order
//!   and types, and its size and every field offset (nested ones too) equal what the
//!   library reports through nq_abi_sizeof / nq_abi_offsetof;
//! - every enum has the same values.
use std::collections::BTreeMap;
use std::ffi::CString;

use nexusquant::sys;

fn header() -> String {
    let path = env!("NEXUSQUANT_HEADER_PATH");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The header without comments and preprocessor lines.
fn declarations(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        out.push(' ');
        rest = &rest[i + 2..];
        let j = rest.find("*/").expect("unterminated comment");
        rest = &rest[j + 2..];
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap())
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Splits "const nq_config *cfg" into ("const nq_config *", "cfg").
fn split_decl(decl: &str) -> (String, String) {
    let decl = decl.trim();
    let name_start = decl.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
    (decl[..name_start].trim().to_string(), decl[name_start..].to_string())
}

/// The Rust spelling of a C type as sys.rs writes it.
fn rust_type(c: &str) -> String {
    let c = c.replace('*', " * ");
    let words: Vec<&str> = c.split_whitespace().collect();
    let mut base_const = false;
    let mut base = "";
    let mut stars: Vec<bool> = Vec::new(); // constness of what each pointer points to
    let mut next_const = false;
    for w in words {
        match w {
            "const" if base.is_empty() || stars.is_empty() => base_const = true,
            "const" => next_const = true,
            "*" => {
                stars.push(if stars.is_empty() { base_const } else { next_const });
                next_const = false;
            }
            _ => base = w,
        }
    }
    let mut t = match base {
        "void" if stars.is_empty() => return "()".to_string(),
        "void" => "c_void",
        "char" => "c_char",
        "int" => "c_int",
        "size_t" => "usize",
        "uint8_t" => "u8",
        "uint16_t" => "u16",
        "uint32_t" => "u32",
        "uint64_t" => "u64",
        "int32_t" => "i32",
        "int64_t" => "i64",
        "float" => "f32",
        "double" => "f64",
        other => other,
    }
    .to_string();
    for is_const in stars {
        t = format!("*{} {}", if is_const { "const" } else { "mut" }, t);
    }
    t
}

fn norm(rust: &str) -> String {
    rust.split_whitespace().collect::<Vec<_>>().join(" ").replace("* const", "*const").replace("* mut", "*mut")
}

struct CFunction {
    name: String,
    ret: String,
    params: Vec<(String, String)>, // (name, C type)
}

fn header_functions(decls: &str) -> Vec<CFunction> {
    let mut out = Vec::new();
    for stmt in decls.split(';') {
        let Some(i) = stmt.find("NQ_API") else { continue };
        let stmt = squash(&stmt[i + "NQ_API".len()..]);
        let open = stmt.find('(').expect("NQ_API declaration without '('");
        let close = stmt.rfind(')').expect("NQ_API declaration without ')'");
        let (ret, name) = split_decl(&stmt[..open]);
        let params_src = stmt[open + 1..close].trim();
        let params = if params_src == "void" || params_src.is_empty() {
            Vec::new()
        } else {
            params_src
                .split(',')
                .map(|p| {
                    let (t, n) = split_decl(p);
                    (n, t)
                })
                .collect()
        };
        out.push(CFunction { name, ret, params });
    }
    out
}

/// `typedef struct NAME { fields } NAME;` -> (NAME, [(field, C type or "fn")]).
fn header_structs(decls: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut rest = decls;
    while let Some(i) = rest.find("typedef struct") {
        rest = &rest[i + "typedef struct".len()..];
        let Some(open) = rest.find('{') else { break };
        let head = rest[..open].trim();
        if head.contains(';') {
            continue; // an opaque typedef: typedef struct nq_context nq_context;
        }
        let close = rest.find('}').unwrap();
        let body = &rest[open + 1..close];
        let mut fields = Vec::new();
        for member in body.split(';').map(squash).filter(|m| !m.is_empty()) {
            if let Some(p) = member.find("(*") {
                let end = member[p..].find(')').unwrap() + p;
                fields.push((member[p + 2..end].trim().to_string(), "fn".to_string()));
            } else {
                let (t, n) = split_decl(&member);
                fields.push((n, t));
            }
        }
        out.insert(head.to_string(), fields);
        rest = &rest[close..];
    }
    out
}

/// `typedef enum NAME { A = 1, ... } NAME;`
fn header_enums(decls: &str) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out = BTreeMap::new();
    let mut rest = decls;
    while let Some(i) = rest.find("typedef enum") {
        rest = &rest[i + "typedef enum".len()..];
        let open = rest.find('{').unwrap();
        // "nq_dtype NQ_ENUM_BASE": the name is the first word (the macro gives C++ a base type).
        let name = rest[..open].split_whitespace().next().unwrap().to_string();
        let close = rest.find('}').unwrap();
        let values = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let (n, val) = v.split_once('=').expect("enum value without '='");
                (n.trim().to_string(), val.trim().parse::<i64>().expect("enum value not a number"))
            })
            .collect();
        out.insert(name, values);
        rest = &rest[close..];
    }
    out
}

#[test]
fn every_header_function_is_declared_with_its_signature() {
    let decls = declarations(&header());
    let c = header_functions(&decls);
    assert!(c.len() >= 40, "parsed only {} functions from the header", c.len());
    let rust: BTreeMap<&str, &sys::FunctionDecl> = sys::FUNCTIONS.iter().map(|f| (f.name, f)).collect();
    let mut problems = Vec::new();
    for f in &c {
        let Some(r) = rust.get(f.name.as_str()) else {
            problems.push(format!("{} is in the header but not in sys.rs", f.name));
            continue;
        };
        if norm(r.ret) != rust_type(&f.ret) {
            problems.push(format!("{}: returns {} in sys.rs, {} ({}) in the header", f.name, r.ret, rust_type(&f.ret), f.ret));
        }
        if r.params.len() != f.params.len() {
            problems.push(format!("{}: {} parameters in sys.rs, {} in the header", f.name, r.params.len(), f.params.len()));
            continue;
        }
        for ((rn, rt), (cn, ct)) in r.params.iter().zip(&f.params) {
            if rn != cn || norm(rt) != rust_type(ct) {
                problems.push(format!("{}: parameter {rn}: {rt} in sys.rs, {cn}: {ct} in the header", f.name));
            }
        }
    }
    let in_header: Vec<&str> = c.iter().map(|f| f.name.as_str()).collect();
    for r in sys::FUNCTIONS {
        if !in_header.contains(&r.name) {
            problems.push(format!("{} is in sys.rs but not in the header", r.name));
        }
    }
    assert!(problems.is_empty(), "sys.rs differs from the header:\n{}", problems.join("\n"));
}

#[test]
fn every_function_resolves() {
    let addrs = sys::function_addresses();
    assert_eq!(addrs.len(), sys::FUNCTIONS.len());
    for (name, addr) in addrs {
        assert_ne!(addr, 0, "{name} has no address");
    }
}

#[test]
fn every_struct_matches_header_and_library() {
    let decls = declarations(&header());
    let c = header_structs(&decls);
    assert!(c.len() >= 10, "parsed only {} structs from the header", c.len());
    let rust: BTreeMap<&str, &sys::StructDecl> = sys::STRUCTS.iter().map(|s| (s.name, s)).collect();
    let mut problems = Vec::new();
    let lib_size = |t: &str| unsafe { sys::nq_abi_sizeof(CString::new(t).unwrap().as_ptr()) };
    let lib_offset = |t: &str, f: &str| unsafe {
        sys::nq_abi_offsetof(CString::new(t).unwrap().as_ptr(), CString::new(f).unwrap().as_ptr())
    };
    for (name, fields) in &c {
        let Some(r) = rust.get(name.as_str()) else {
            problems.push(format!("struct {name} is in the header but not in sys.rs"));
            continue;
        };
        let names: Vec<&str> = r.fields.iter().map(|f| f.name).collect();
        let cnames: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        if names != cnames {
            problems.push(format!("{name}: fields {names:?} in sys.rs, {cnames:?} in the header"));
            continue;
        }
        for (f, (_, ct)) in r.fields.iter().zip(fields) {
            let ok = if ct == "fn" { norm(f.ty).starts_with("nq_") && f.ty.ends_with("_fn") } else { norm(f.ty) == rust_type(ct) };
            if !ok {
                problems.push(format!("{name}.{}: {} in sys.rs, {ct} in the header", f.name, f.ty));
            }
        }
        let size = lib_size(name);
        if size == usize::MAX {
            // Structs the library does not list (none today) are only checked against the header.
            continue;
        }
        if size != r.size {
            problems.push(format!("{name}: size {} in Rust, {size} in the library", r.size));
        }
        for f in r.fields {
            let off = lib_offset(name, f.name);
            if off != f.offset {
                problems.push(format!("{name}.{}: offset {} in Rust, {off} in the library", f.name, f.offset));
            }
            // Nested structs: "rope.theta" = offset of rope + offset of theta in nq_rope.
            if let Some(inner) = rust.get(f.ty.trim()) {
                for g in inner.fields {
                    let path = format!("{}.{}", f.name, g.name);
                    let off = lib_offset(name, &path);
                    if off != f.offset + g.offset {
                        problems.push(format!("{name}.{path}: offset {} in Rust, {off} in the library", f.offset + g.offset));
                    }
                }
            }
        }
    }
    for r in sys::STRUCTS {
        if !c.contains_key(r.name) {
            problems.push(format!("struct {} is in sys.rs but not in the header", r.name));
        }
    }
    assert!(problems.is_empty(), "struct layouts differ:\n{}", problems.join("\n"));
}

#[test]
fn every_enum_matches_the_header() {
    let decls = declarations(&header());
    let c = header_enums(&decls);
    assert!(c.len() >= 10, "parsed only {} enums from the header", c.len());
    let rust: BTreeMap<&str, Vec<(String, i64)>> =
        sys::ENUMS.iter().map(|e| (e.name, e.values.iter().map(|(n, v)| (n.to_string(), *v)).collect())).collect();
    let header_names: Vec<&String> = c.keys().collect();
    let rust_names: Vec<&&str> = rust.keys().collect();
    assert_eq!(header_names.len(), rust_names.len(), "enums: header {header_names:?}, sys.rs {rust_names:?}");
    for (name, values) in &c {
        assert_eq!(rust.get(name.as_str()), Some(values), "enum {name} differs");
    }
}

#[test]
fn version_macros_match_the_library() {
    let h = header();
    let define = |name: &str| -> u32 {
        let line = h.lines().find(|l| l.starts_with(&format!("#define {name} "))).expect(name);
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert_eq!(define("NQ_VERSION_MAJOR"), sys::NQ_VERSION_MAJOR);
    assert_eq!(define("NQ_VERSION_MINOR"), sys::NQ_VERSION_MINOR);
    assert_eq!(define("NQ_VERSION_PATCH"), sys::NQ_VERSION_PATCH);
    assert_eq!(nexusquant::version_number(), sys::NQ_VERSION_NUMBER, "header and library versions differ");
    assert!(h.contains("#define NQ_PRESET_CONSERVATIVE NQ_PRESET_HIGH"));
    assert!(h.contains("#define NQ_PRESET_AGGRESSIVE NQ_PRESET_MAX"));
}

#[test]
fn the_type_translation_itself() {
    assert_eq!(rust_type("const nq_config *"), "*const nq_config");
    assert_eq!(rust_type("nq_block **"), "*mut *mut nq_block");
    assert_eq!(rust_type("const void **"), "*mut *const c_void");
    assert_eq!(rust_type("void"), "()");
    assert_eq!(rust_type("const char *"), "*const c_char");
    assert_eq!(rust_type("uint32_t"), "u32");
}
