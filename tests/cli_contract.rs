//! The deployment files and the binary's command line agree. Every command line and setting
//! that deploy/compose.yaml, deploy/kubernetes/** and deploy/Dockerfile hand to
//! `signup-worker` is parsed by its real clap definition ([`Cli::command`]), so a typo in a
//! subcommand, a flag, an environment variable name or a value fails here, not in a
//! deployment. The settings tables of the README (and of the contract, when `shared/` lies
//! beside the checkout) are held to the same definition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use serde::Deserialize;
use serde_norway::Value;
use signup_worker::cli::Cli;

/// Settings that the process reads without clap: (name or `PREFIX_*`, who reads it).
const NOT_CLAP: &[(&str, &str)] = &[
    ("RUST_LOG", "tracing's EnvFilter"),
    (
        "OTEL_*",
        "the OpenTelemetry SDK's standard variables (contract section 2)",
    ),
];

/// Environment variables, with their value when the file states it.
type Env = Vec<(String, Option<String>)>;

/// One start of the binary as a deployment file describes it.
struct Invocation {
    origin: String,
    args: Vec<String>,
    env: Env,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Every argument of the command line, subcommands' included.
fn all_args() -> Vec<clap::Arg> {
    let mut out = Vec::new();
    let mut stack = vec![Cli::command()];
    while let Some(cmd) = stack.pop() {
        out.extend(cmd.get_arguments().cloned());
        stack.extend(cmd.get_subcommands().cloned());
    }
    out
}

/// Every environment variable clap reads, with the long flag of its argument.
fn clap_settings() -> BTreeMap<String, String> {
    let args = all_args();
    let settings = args
        .iter()
        .filter_map(|a| Some((a.get_env()?.to_str()?.to_owned(), a.get_long()?.to_owned())));
    settings.collect()
}

/// clap's error, without its usage lines.
fn first_line(e: &clap::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

fn known_without_clap(name: &str) -> bool {
    NOT_CLAP.iter().any(|(n, _)| match n.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *n == name,
    })
}

/// The problems of one invocation: its command line must parse; each variable must be a
/// setting, and its value must parse where the invoked subcommand takes it.
fn problems(inv: &Invocation) -> Vec<String> {
    let bin = Cli::command().get_name().to_owned();
    let mut out = Vec::new();
    let argv = |extra: &[String]| [std::slice::from_ref(&bin), &inv.args[..], extra].concat();
    if let Err(e) = Cli::try_parse_from(argv(&[])) {
        out.push(format!(
            "{}: `{}`: {}",
            inv.origin,
            inv.args.join(" "),
            first_line(&e)
        ));
        return out;
    }
    let settings = clap_settings();
    for (name, value) in &inv.env {
        let Some(long) = settings.get(name) else {
            if !known_without_clap(name) {
                out.push(format!(
                    "{}: {name} is no setting of the binary",
                    inv.origin
                ));
            }
            continue;
        };
        let Some(value) = value.as_ref().filter(|v| !v.contains("${")) else {
            continue;
        };
        match Cli::try_parse_from(argv(&[format!("--{long}={value}")])) {
            // A setting of another subcommand (a ConfigMap shared by `run` and `migrate`).
            Err(e) if e.kind() == ErrorKind::UnknownArgument => {}
            Err(e) => out.push(format!(
                "{}: {name}={value}: {}",
                inv.origin,
                first_line(&e)
            )),
            Ok(_) => {}
        }
    }
    out
}

fn assert_agree(what: &str, invocations: &[Invocation], at_least: usize) {
    assert!(
        invocations.len() >= at_least,
        "{what}: found {} invocations of the binary, expected at least {at_least}: does the reader still understand the files?",
        invocations.len()
    );
    let all: Vec<String> = invocations.iter().flat_map(problems).collect();
    assert!(
        all.is_empty(),
        "{what} disagree with the CLI:\n  {}",
        all.join("\n  ")
    );
}

/// ENTRYPOINT and CMD of the runtime stage, in exec form.
fn dockerfile_exec(keyword: &str) -> Vec<String> {
    let text = read(&repo().join("deploy/Dockerfile"));
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix(keyword)?.strip_prefix(' '))
        .next_back()
        .unwrap_or_else(|| panic!("deploy/Dockerfile has no {keyword}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{keyword} {line}: not exec form: {e}"))
}

#[test]
fn compose_services_use_known_flags_and_settings() {
    let doc = &yaml_docs(&repo().join("deploy/compose.yaml"))[0];
    let services = doc["services"].as_mapping().expect("services");
    let invocations: Vec<Invocation> = services
        .iter()
        .filter(|(_, svc)| svc.get("build").is_some())
        .map(|(name, svc)| {
            let env = match &svc["environment"] {
                Value::Mapping(m) => m
                    .iter()
                    .map(|(k, v)| (scalar(k), (!v.is_null()).then(|| scalar(v))))
                    .collect(),
                Value::Sequence(items) => items
                    .iter()
                    .map(|i| match scalar(i).split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (scalar(i), None),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let args = svc
                .get("command")
                .map(strings)
                .unwrap_or_else(|| dockerfile_exec("CMD"));
            Invocation {
                origin: format!("compose service {}", scalar(name)),
                args,
                env,
            }
        })
        .collect();
    assert_agree("deploy/compose.yaml", &invocations, 3);
}

#[test]
fn kubernetes_containers_use_known_flags_and_settings() {
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    let docs: Vec<(String, Value)> = files
        .iter()
        .flat_map(|f| {
            let origin = f.strip_prefix(repo()).unwrap_or(f).display().to_string();
            yaml_docs(f).into_iter().map(move |d| (origin.clone(), d))
        })
        .collect();
    // ConfigMaps and Secrets by name, overlays' patches included: each key becomes a variable
    // (with its value, except under a Secret's base64 `data`).
    let mut sources: BTreeMap<(String, String), Env> = BTreeMap::new();
    for (_, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind == "ConfigMap" || kind == "Secret" {
            let entries = sources
                .entry((kind.to_owned(), scalar(&doc["metadata"]["name"])))
                .or_default();
            for field in ["data", "stringData"] {
                if let Some(m) = doc[field].as_mapping() {
                    entries.extend(m.iter().map(|(k, v)| {
                        (
                            scalar(k),
                            (kind == "ConfigMap" || field == "stringData").then(|| scalar(v)),
                        )
                    }));
                }
            }
        }
    }
    let mut invocations = Vec::new();
    for (origin, doc) in &docs {
        let mut stack = vec![doc];
        while let Some(v) = stack.pop() {
            match v {
                Value::Mapping(m) => {
                    for (k, child) in m {
                        if matches!(k.as_str(), Some("containers" | "initContainers")) {
                            let ours = child.as_sequence().into_iter().flatten();
                            invocations.extend(
                                ours.filter(|c| runs_binary(c))
                                    .map(|c| container(origin, c, &sources)),
                            );
                        } else {
                            stack.push(child);
                        }
                    }
                }
                Value::Sequence(items) => stack.extend(items),
                _ => {}
            }
        }
    }
    assert_agree("deploy/kubernetes", &invocations, 2);
}

fn runs_binary(container: &Value) -> bool {
    let bin = Cli::command().get_name().to_owned();
    container["image"]
        .as_str()
        .is_some_and(|i| i.contains(&bin))
}

fn container(origin: &str, c: &Value, sources: &BTreeMap<(String, String), Env>) -> Invocation {
    // `command` replaces the image's ENTRYPOINT (the binary), `args` its CMD.
    let command = c.get("command").map(strings).unwrap_or_default();
    let mut args: Vec<String> = command.into_iter().skip(1).collect();
    args.extend(
        c.get("args")
            .map(strings)
            .unwrap_or_else(|| dockerfile_exec("CMD")),
    );
    let mut env = Vec::new();
    for from in c["envFrom"].as_sequence().into_iter().flatten() {
        for (key, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            if let Some(name) = from[key]["name"].as_str() {
                let vars = sources.get(&(kind.to_owned(), name.to_owned()));
                env.extend(
                    vars.unwrap_or_else(|| panic!("{origin}: envFrom {kind} {name} not found"))
                        .iter()
                        .cloned(),
                );
            }
        }
    }
    for var in c["env"].as_sequence().into_iter().flatten() {
        env.push((scalar(&var["name"]), var.get("value").map(scalar)));
    }
    Invocation {
        origin: format!("{origin} container {}", scalar(&c["name"])),
        args,
        env,
    }
}

#[test]
fn dockerfile_entrypoint_cmd_and_defaults_match_the_cli() {
    let cmd = Cli::command();
    assert_eq!(
        dockerfile_exec("ENTRYPOINT"),
        [cmd.get_name()],
        "ENTRYPOINT is the binary, in exec form"
    );
    let text = read(&repo().join("deploy/Dockerfile"));
    let mut env: Env = Vec::new();
    // ENV lines, and `${NAME:-default}` in shell snippets (the HEALTHCHECK's METRICS_ADDR):
    // the default there must be the binary's own.
    for line in text.lines().filter_map(|l| l.strip_prefix("ENV ")) {
        let (k, v) = line.split_once(['=', ' ']).expect("ENV NAME=value");
        env.push((k.to_owned(), Some(v.trim_matches('"').to_owned())));
    }
    let mut defaults = 0;
    for (_, rest) in text.match_indices("${").map(|(i, _)| text.split_at(i + 2)) {
        let Some((name, default)) = rest
            .split_once('}')
            .and_then(|(inner, _)| inner.split_once(":-"))
        else {
            continue;
        };
        let args = all_args();
        let arg = args.iter().find(|a| a.get_env().is_some_and(|e| e == name));
        let arg = arg
            .unwrap_or_else(|| panic!("Dockerfile: ${{{name}:-...}} is no setting of the binary"));
        let binary_default: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy())
            .collect();
        assert_eq!(
            binary_default,
            [default],
            "Dockerfile: the default of {name} is the binary's"
        );
        defaults += 1;
    }
    assert!(
        defaults > 0,
        "the HEALTHCHECK's port follows ${{METRICS_ADDR:-...}}"
    );
    let inv = Invocation {
        origin: "deploy/Dockerfile".into(),
        args: dockerfile_exec("CMD"),
        env,
    };
    assert_agree("deploy/Dockerfile", &[inv], 1);
}

/// Names in the first column of the markdown table under `heading`.
fn table_names(text: &str, heading: &str) -> Vec<String> {
    let section = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"))
        .1;
    let section = section.split("\n#").next().unwrap_or_default();
    let names = section.lines().filter_map(|l| {
        l.strip_prefix("| `")?
            .split_once('`')
            .map(|(n, _)| n.to_owned())
    });
    names.collect()
}

#[test]
fn documented_settings_are_the_cli_settings() {
    let settings = clap_settings();
    let readme = table_names(&read(&repo().join("README.md")), "\n## Configuration");
    let unknown: Vec<_> = readme
        .iter()
        .filter(|n| !settings.contains_key(*n) && !known_without_clap(n))
        .collect();
    let undocumented: Vec<_> = settings.keys().filter(|n| !readme.contains(n)).collect();
    assert!(
        unknown.is_empty(),
        "README settings the binary does not read: {unknown:?}"
    );
    assert!(
        undocumented.is_empty(),
        "settings of the binary missing from the README: {undocumented:?}"
    );
    // The contract names each flag after its variable (section 2).
    for (env, long) in &settings {
        assert_eq!(
            *long,
            env.to_lowercase().replace('_', "-"),
            "the flag of {env}"
        );
    }
    let contract = repo().join("../shared/CONTRACT.md");
    if !contract.exists() {
        eprintln!(
            "note: {} not found: the contract's settings table is not checked",
            contract.display()
        );
        return;
    }
    let names = table_names(&read(&contract), "\n## 2. Configuration");
    assert!(
        names.len() > 5,
        "the contract's settings table was not found"
    );
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !settings.contains_key(*n) && !known_without_clap(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "contract settings the binary does not read: {unknown:?}"
    );
}
