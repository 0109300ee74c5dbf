//! The Fortran module `ckpt` (`include/ckpt.f90`, written by hand) against the C header and the library:
//!
//! * every function of `include/ckpt.h` has a `bind(C, name="...")` interface of the same name whose
//!   arguments and result have the matching interoperable types, passed by value or by reference as the C
//!   prototype says (checked by parsing both files: the hand-written interfaces cannot drift);
//! * the CKPT_* constants of the module equal the header's macros (in the source, and as compiled);
//! * `ckpt.f90` and `ckpt_mpi.f90` compile warning-free as standard Fortran 2018;
//! * `tests/fortran/test_api.f90` exercises every binding's success and error paths (as `tests/c/test_api.c`
//!   does for C) against this build's libckpt.so, with gfortran's runtime checks and AddressSanitizer, and
//!   linked statically against libckpt.a.
//!
//! Skipped with a note when gfortran is not installed (CI: `apt-get install gfortran`).

mod common;
use common::{clean_env, have, lib_dir, root, shared_link};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A C prototype: return type and parameters as (normalised type, name), e.g. ("const char *", "name").
#[derive(Debug)]
struct CFunction {
    ret: String,
    params: Vec<(String, String)>,
    doc: String,
}

/// "const char *name" -> ("const char *", "name"); "int32_t id" -> ("int32_t", "id").
fn split_c_param(p: &str) -> (String, String) {
    let p = p.trim();
    let cut = p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).expect("a type and a name");
    let name = p[cut + 1..].to_string();
    // "const char*" and "const char *" alike: the stars apart, the words joined by one space
    let ty = p[..=cut].replace('*', " * ").split_whitespace().collect::<Vec<_>>().join(" ").replace("* *", "**");
    (ty, name)
}

fn header_functions(header: &str) -> BTreeMap<String, CFunction> {
    let mut out = BTreeMap::new();
    let mut doc = String::new();
    let mut decl = String::new();
    for line in header.lines() {
        let t = line.trim();
        if let Some(c) = t.strip_prefix("//") {
            doc.push_str(c);
            doc.push(' ');
            continue;
        }
        if decl.is_empty() && !(t.starts_with("int32_t ckpt_") || t.starts_with("const char *ckpt_")) {
            if !t.is_empty() {
                doc.clear();
            }
            continue;
        }
        decl.push_str(t);
        decl.push(' ');
        if t.ends_with(';') {
            let open = decl.find('(').unwrap();
            let close = decl.rfind(')').unwrap();
            let (ret, name) = split_c_param(&decl[..open]);
            let inner = decl[open + 1..close].trim();
            let params = if inner == "void" || inner.is_empty() {
                Vec::new()
            } else {
                inner.split(',').map(split_c_param).collect()
            };
            out.insert(name, CFunction { ret, params, doc: std::mem::take(&mut doc) });
            decl.clear();
        }
    }
    out
}

/// `#define CKPT_X value` -> value (numbers and the version string; CKPT_VERSION_NUMBER's expression is
/// evaluated).
fn header_constants(header: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in header.lines() {
        let Some(rest) = line.strip_prefix("#define CKPT_") else { continue };
        let Some((name, value)) = rest.split_once(char::is_whitespace) else { continue };
        let value = value.trim();
        let value = if let Some(expr) = value.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
            // "(0 * 10000 + 1 * 100 + 0)"
            let sum: i64 = expr
                .split('+')
                .map(|term| term.split('*').map(|f| f.trim().parse::<i64>().unwrap()).product::<i64>())
                .sum();
            sum.to_string()
        } else {
            value.trim_matches('"').to_string()
        };
        out.insert(format!("CKPT_{name}"), value);
    }
    out
}

/// Fortran source as statements: comments removed, continuation lines joined, lower case outside strings.
fn fortran_statements(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in src.lines() {
        let mut code = String::new();
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match quote {
                Some(q) => {
                    code.push(c);
                    if c == q {
                        quote = None;
                    }
                }
                None if c == '!' => break,
                None => {
                    if c == '"' || c == '\'' {
                        quote = Some(c);
                    }
                    code.push(c.to_ascii_lowercase());
                }
            }
        }
        let code = code.trim();
        let code = if pending.is_empty() { code } else { code.trim_start_matches('&').trim_start() };
        if let Some(head) = code.strip_suffix('&') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        if !pending.trim().is_empty() {
            out.push(pending.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        pending.clear();
    }
    out
}

/// Splits at commas outside parentheses.
fn top_level_split(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_string());
    }
    parts
}

#[derive(Debug, Default, Clone)]
struct FDummy {
    ty: String,
    value: bool,
    array: bool,
    optional: bool,
    intent: String,
}

#[derive(Debug)]
struct FInterface {
    bind_name: String,
    args: Vec<String>,
    result: String,
    decls: BTreeMap<String, FDummy>,
}

fn fortran_interfaces(stmts: &[String]) -> BTreeMap<String, FInterface> {
    let mut out = BTreeMap::new();
    let mut in_interface = false;
    let mut current: Option<(String, FInterface)> = None;
    for s in stmts {
        if s == "interface" {
            in_interface = true;
            continue;
        }
        if s == "end interface" {
            in_interface = false;
            continue;
        }
        if !in_interface {
            continue;
        }
        if let Some(rest) = s.strip_prefix("function ") {
            let name = rest[..rest.find('(').unwrap()].trim().to_string();
            let args_text = &rest[rest.find('(').unwrap() + 1..rest.find(')').unwrap()];
            let args = args_text.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
            let bind = rest.find("bind(c, name=\"").map(|i| {
                let b = &rest[i + "bind(c, name=\"".len()..];
                b[..b.find('"').unwrap()].to_string()
            });
            let result = rest
                .find("result(")
                .map(|i| rest[i + 7..].trim_end_matches(')').trim().to_string())
                .unwrap_or_else(|| name.clone());
            let f = FInterface { bind_name: bind.unwrap_or_default(), args, result, decls: BTreeMap::new() };
            current = Some((name, f));
            continue;
        }
        if s.starts_with("end function") {
            let (name, f) = current.take().expect("end function without function");
            out.insert(name, f);
            continue;
        }
        let Some((_, f)) = current.as_mut() else { continue };
        let Some((spec, names)) = s.split_once("::") else { continue };
        let mut attrs = top_level_split(spec).into_iter();
        let ty = attrs.next().unwrap().replace(' ', "");
        let mut d = FDummy { ty, ..FDummy::default() };
        for a in attrs {
            let a = a.replace(' ', "");
            match a.as_str() {
                "value" => d.value = true,
                "optional" => d.optional = true,
                "dimension(*)" => d.array = true,
                _ if a.starts_with("intent(") => d.intent = a[7..a.len() - 1].to_string(),
                _ => panic!("unexpected attribute {a:?} in {s:?}"),
            }
        }
        for n in names.split(',') {
            f.decls.insert(n.trim().to_string(), d.clone());
        }
    }
    out
}

/// The C types a Fortran dummy argument can stand for.
fn c_types_for(d: &FDummy) -> Vec<&'static str> {
    match (d.ty.as_str(), d.value, d.array) {
        // Fortran has no unsigned integers: a uint32_t travels as an integer(c_int32_t) of the same size.
        ("integer(c_int32_t)", true, false) => vec!["int32_t", "uint32_t"],
        ("integer(c_int32_t)", false, false) => vec!["int32_t *", "uint32_t *"],
        ("integer(c_int32_t)", false, true) if d.intent != "in" => vec!["int32_t *", "uint32_t *"],
        ("integer(c_int64_t)", true, false) => vec!["int64_t", "uint64_t"],
        ("integer(c_int64_t)", false, false) => vec!["int64_t *", "uint64_t *"],
        ("integer(c_size_t)", true, false) => vec!["size_t"],
        ("integer(c_size_t)", false, false) => vec!["size_t *"],
        ("type(c_ptr)", true, false) => {
            vec!["void *", "const void *", "struct ckpt_restart_details *", "const struct ckpt_restart_details *"]
        }
        ("type(c_ptr)", false, false) => vec!["struct ckpt_restart_details **", "const char **"],
        ("type(ckpt_part_identity)", false, _) if d.intent == "in" => vec!["const struct ckpt_part_identity *"],
        ("type(ckpt_part_identity)", false, _) => vec!["struct ckpt_part_identity *"],
        ("character(kind=c_char)", false, true) if d.intent == "in" => vec!["const char *"],
        ("character(kind=c_char)", false, true) => vec!["char *"],
        _ => vec![],
    }
}

#[test]
fn every_header_function_has_a_matching_fortran_interface() {
    let header = read("include/ckpt.h");
    let c = header_functions(&header);
    assert!(c.len() >= 26, "parsed only {} functions from ckpt.h: {:?}", c.len(), c.keys());
    let stmts = fortran_statements(&read("include/ckpt.f90"));
    let f = fortran_interfaces(&stmts);
    let mut problems = Vec::new();
    for (name, cf) in &c {
        let Some(fi) = f.get(name) else {
            problems.push(format!("{name}: no interface in ckpt.f90"));
            continue;
        };
        if &fi.bind_name != name {
            problems.push(format!("{name}: bind(C, name={:?})", fi.bind_name));
        }
        let want_ret = match cf.ret.as_str() {
            "int32_t" => "integer(c_int32_t)",
            "const char *" => "type(c_ptr)",
            other => panic!("{name}: unexpected return type {other}"),
        };
        match fi.decls.get(&fi.result) {
            Some(r) if r.ty == want_ret && !r.value && !r.array => {}
            r => problems.push(format!("{name}: result {r:?}, expected {want_ret}")),
        }
        if fi.args.len() != cf.params.len() {
            problems.push(format!("{name}: {} arguments in Fortran, {} in C", fi.args.len(), cf.params.len()));
            continue;
        }
        for (arg, (cty, cname)) in fi.args.iter().zip(&cf.params) {
            if arg != cname {
                problems.push(format!("{name}: argument {arg} is {cname} in C"));
            }
            let Some(d) = fi.decls.get(arg) else {
                problems.push(format!("{name}: argument {arg} has no declaration"));
                continue;
            };
            if !c_types_for(d).contains(&cty.as_str()) {
                problems.push(format!("{name}({arg}): Fortran {d:?} does not match C {cty}"));
            }
            if cty.ends_with('*') && !d.value && d.intent.is_empty() {
                problems.push(format!("{name}({arg}): a pointer argument needs an intent"));
            }
            // OPTIONAL (absent = NULL) only where the header allows NULL
            if d.optional {
                let allowed = cf.doc.contains(&format!("`{arg}` may be NULL"))
                    || (cf.doc.contains("may be NULL") && cf.doc.contains(&format!("`*{arg}`")))
                    || (cf.doc.contains("NULL means") && arg == "name")
                    || (cf.doc.contains("NULL `value`") && arg == "value");
                if !allowed {
                    problems.push(format!("{name}({arg}) is OPTIONAL but the header does not allow NULL"));
                }
            }
        }
    }
    for name in f.keys() {
        if !c.contains_key(name) {
            problems.push(format!("ckpt.f90 declares {name}, which ckpt.h does not have"));
        }
    }
    assert!(problems.is_empty(), "ckpt.f90 does not match ckpt.h:\n{}", problems.join("\n"));
}

fn fortran_parameters(stmts: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in stmts {
        if !s.contains("parameter") {
            continue;
        }
        let Some((_, rest)) = s.split_once("::") else { continue };
        let Some((name, value)) = rest.split_once('=') else { continue };
        let name = name.trim().to_ascii_uppercase();
        if name.starts_with("CKPT_") {
            out.insert(name, value.trim().trim_matches('"').to_string());
        }
    }
    out
}

#[test]
fn the_module_constants_equal_the_header_macros() {
    let h = header_constants(&read("include/ckpt.h"));
    let f = fortran_parameters(&fortran_statements(&read("include/ckpt.f90")));
    assert!(h.len() >= 25, "{h:?}");
    for (name, value) in &h {
        if name == "CKPT_VERSION_NUMBER" {
            continue; // an expression in Fortran too: checked as compiled (the_fortran_module_works_against_libckpt)
        }
        assert_eq!(f.get(name), Some(value), "{name}: ckpt.f90 has {:?}, ckpt.h {value:?}", f.get(name));
    }
    for name in f.keys() {
        assert!(h.contains_key(name), "ckpt.f90 defines {name}, which ckpt.h does not");
    }
}

/// The fields of each `typedef struct NAME { ... } NAME;` of the header: (C type, field name) in order.
fn header_structs(header: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    for line in header.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("typedef struct ") {
            current = Some((rest.trim_end_matches('{').trim().to_string(), Vec::new()));
        } else if line.starts_with('}') {
            if let Some((name, fields)) = current.take() {
                out.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut()
            && let Some(decl) = line.strip_suffix(';')
        {
            fields.push(split_c_param(decl));
        }
    }
    out
}

/// The components of each `type, bind(c) ... :: NAME` of the module: (Fortran type, name) in order.
fn fortran_bind_c_types(stmts: &[String]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    for s in stmts {
        if s.starts_with("type,") && s.contains("bind(c)") {
            let name = s.rsplit("::").next().unwrap().trim().to_string();
            current = Some((name, Vec::new()));
        } else if s.starts_with("end type") {
            if let Some((name, fields)) = current.take() {
                out.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut() {
            let (ty, rest) = s.split_once("::").expect("a component declaration");
            let name = rest.split('=').next().unwrap().trim().to_string();
            fields.push((ty.replace(' ', ""), name));
        }
    }
    out
}

#[test]
fn the_module_types_have_the_header_structs_layout() {
    let c = header_structs(&read("include/ckpt.h"));
    let f = fortran_bind_c_types(&fortran_statements(&read("include/ckpt.f90")));
    assert!(c.contains_key("ckpt_part_identity"), "parsed structs: {:?}", c.keys());
    assert_eq!(c.keys().collect::<Vec<_>>(), f.keys().collect::<Vec<_>>(), "the same structs in ckpt.h and ckpt.f90");
    for (name, fields) in &c {
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(ty, field)| {
                let fty = match ty.as_str() {
                    "int64_t" | "uint64_t" => "integer(c_int64_t)",
                    "int32_t" | "uint32_t" => "integer(c_int32_t)",
                    other => panic!("{name}.{field}: no Fortran type for C {other}"),
                };
                (fty.to_string(), field.clone())
            })
            .collect();
        assert_eq!(f[name], want, "type {name}: components (type, name) in order");
    }
}

fn fortran_compile(args: &[&str], files: &[&Path], out: &Path, extra: &[String]) {
    let o =
        Command::new("gfortran").args(args).args(files).arg("-o").arg(out).args(extra).output().expect("run gfortran");
    assert!(
        o.status.success(),
        "gfortran {args:?} {files:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run_test(exe: &Path, header: &BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg(dir.path());
    clean_env(&mut cmd);
    let o = cmd.output().expect("run the Fortran test");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{} failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{}",
        exe.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("all Fortran API checks passed"), "{stdout}");
    // the constants as compiled
    let mut seen = 0;
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("CONST ") else { continue };
        let (name, value) = rest.split_once(' ').unwrap();
        assert_eq!(header.get(name).map(String::as_str), Some(value.trim()), "{name} as compiled");
        seen += 1;
    }
    assert_eq!(seen, header.len(), "every CKPT_* macro is printed");
}

#[test]
fn the_fortran_module_works_against_libckpt() {
    if !have("gfortran") {
        eprintln!("skipped: gfortran is not installed (apt-get install gfortran)");
        return;
    }
    let header = header_constants(&read("include/ckpt.h"));
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let moddir = t.join("mod");
    std::fs::create_dir_all(&moddir).unwrap();
    let ckpt_f90 = root().join("include/ckpt.f90");
    let test_f90 = root().join("ckpt-ffi/tests/fortran/test_api.f90");
    let strict = ["-std=f2018", "-Wall", "-Wextra", "-Werror", "-pedantic"];

    // the module itself: standard Fortran 2018, no warnings
    let jflag = format!("-J{}", moddir.display());
    let mut args: Vec<&str> = strict.to_vec();
    args.extend(["-g", "-fPIC", "-c", jflag.as_str()]);
    fortran_compile(&args, &[&ckpt_f90], &t.join("ckpt.o"), &[]);

    let d = lib_dir();
    let shared = shared_link();
    let iflag = format!("-I{}", moddir.display());
    let test_args = ["-std=f2018", "-Wall", "-Wno-compare-reals", "-cpp", "-g", iflag.as_str(), jflag.as_str()];

    // with the runtime checks and AddressSanitizer/UBSan, against libckpt.so
    let mut args = test_args.to_vec();
    args.extend(["-fcheck=all", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]);
    let exe = t.join("test_api_asan");
    fortran_compile(&args, &[&test_f90, &t.join("ckpt.o")], &exe, &shared);
    run_test(&exe, &header);

    // linked statically against libckpt.a
    let exe = t.join("test_api_static");
    let static_libs = vec![d.join("libckpt.a").display().to_string(), "-lpthread".into(), "-ldl".into(), "-lm".into()];
    fortran_compile(&test_args, &[&test_f90, &t.join("ckpt.o")], &exe, &static_libs);
    run_test(&exe, &header);
}

#[test]
fn the_mpi_module_compiles_as_standard_fortran() {
    if !have("mpif90") {
        eprintln!("skipped: mpif90 is not installed (apt-get install libopenmpi-dev gfortran)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let jflag = format!("-J{}", tmp.path().display());
    for f in ["ckpt.f90", "ckpt_mpi.f90"] {
        let o = Command::new("mpif90")
            .args(["-std=f2018", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", &jflag])
            .arg(format!("-I{}", tmp.path().display()))
            .arg(root().join("include").join(f))
            .arg("-o")
            .arg(tmp.path().join(f.replace(".f90", ".o")))
            .output()
            .expect("run mpif90");
        assert!(o.status.success(), "mpif90 {f}:\n{}", String::from_utf8_lossy(&o.stderr));
    }
}
