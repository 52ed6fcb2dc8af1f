//! The publishing examples of the README's "For publishers" section, run as written against a
//! real worker: the README's code blocks are the files in `examples/`, and each file, run as a
//! program, publishes an event that the worker stores and answers with `completed`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::*;

/// The pika release the Python example names (`pip install ...` in its docstring).
const PIKA: &str = "pika==1.4.4";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The code blocks fenced with ```lang in the README's section `## For publishers`.
fn readme_blocks(lang: &str) -> Vec<String> {
    let readme = read("README.md");
    let section = readme
        .split_once("\n## For publishers\n")
        .expect("the README has a section ## For publishers")
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    let fence = format!("```{lang}\n");
    section
        .split(fence.as_str())
        .skip(1)
        .map(|rest| {
            rest.split_once("```\n")
                .expect("a closed code block")
                .0
                .to_owned()
        })
        .collect()
}

#[test]
fn the_readme_shows_the_example_files_as_they_are() {
    assert_eq!(
        readme_blocks("rust"),
        [read("examples/publish_signup.rs")],
        "the README's Rust block is examples/publish_signup.rs"
    );
    assert_eq!(
        readme_blocks("python"),
        [read("examples/publish_signup.py")],
        "the README's Python block is examples/publish_signup.py"
    );
    assert!(read("examples/publish_signup.py").contains(&format!("pip install {PIKA}")));
}

/// `<target>/<profile>`, from the path of the binary under test.
fn profile_dir() -> &'static Path {
    Path::new(BIN)
        .parent()
        .expect("the binary is in a profile directory")
}

/// Builds examples/publish_signup.rs like the binary under test and returns its path.
/// `cargo test` builds no examples when targets are named, as scripts/test.sh does; its build
/// step builds them, so that this is only a freshness check there.
fn rust_example() -> PathBuf {
    let profile = profile_dir();
    let target = profile
        .parent()
        .expect("the profile is in a target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Without the variables cargo sets for a test process (CARGO_PKG_*, CARGO_MANIFEST_DIR,
    // LD_LIBRARY_PATH, ...): the build must look like `cargo build` from a shell, or its
    // fingerprints differ and it rebuilds what scripts/test.sh has built already.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let for_tests = ["LD_LIBRARY_PATH", "MAKEFLAGS", "MFLAGS"].contains(&name.as_ref());
        if (name.starts_with("CARGO_") && name != "CARGO_HOME") || for_tests {
            build.env_remove(name.as_ref());
        }
    }
    build
        .current_dir(repo())
        .args([
            "build",
            "--quiet",
            "--example",
            "publish_signup",
            "--target-dir",
        ])
        .arg(target);
    if profile.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build --example");
    assert!(
        status.success(),
        "cargo build --example publish_signup failed"
    );
    profile.join("examples/publish_signup")
}

/// A Python with pika, in a virtual environment under the target directory (made once).
/// `None`, with the reason printed, where python3 or its venv/pip module is missing.
fn python_with_pika() -> Option<PathBuf> {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: the Python publishing example: python3 is not installed");
        return None;
    }
    let venv = profile_dir().join("publish-example-venv");
    let python = venv.join("bin/python");
    let has_pika = |python: &Path| {
        let check = format!(
            "import pika, sys; sys.exit(pika.__version__ != {:?})",
            PIKA.trim_start_matches("pika==")
        );
        Command::new(python)
            .args(["-c", &check])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_pika(&python) {
        return Some(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .expect("run python3 -m venv");
    if !made.status.success() {
        eprintln!(
            "SKIPPED: the Python publishing example: python3 cannot make a virtual environment \
             with pip (on Debian: apt-get install python3-venv): {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
        return None;
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PIKA,
        ])
        .status()
        .expect("run pip");
    assert!(installed.success(), "pip install {PIKA} failed");
    assert!(
        has_pika(&python),
        "{PIKA} is not importable after installing it"
    );
    Some(python)
}

/// Runs one example and returns the event id it says it published.
fn publish_with(env: &TestEnv, mut example: Command, slug: &str) -> String {
    let out = example
        .arg(slug)
        .env("AMQP_URL", amqp_url())
        .env("SIGNUP_EXCHANGE", &env.topology.exchange)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{example:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .trim()
        .strip_prefix("published ")
        .unwrap_or_else(|| panic!("the example says what it published: {stdout}"));
    uuid::Uuid::parse_str(id).expect("a UUID event id");
    id.to_owned()
}

/// The event with this id became the tenant `slug`, and its outcome says so.
async fn assert_stored(env: &TestEnv, id: &str, slug: &str) {
    wait_for(&format!("the {slug} event stored"), || async {
        env.scalar(&format!(
            "SELECT count(*) FROM tenants WHERE event_id = '{id}' AND slug = '{slug}' \
             AND business_name = 'Acme Bakery' AND tier = 'starter' AND NOT is_demo"
        ))
        .await
            == 1
    })
    .await;
    wait_for(&format!("the completed outcome of {slug}"), || async {
        env.outcomes()
            .await
            .iter()
            .any(|o| o.kind == "tenant.signup.completed" && o.event_id.as_deref() == Some(id))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishing_examples_store_their_events() {
    let env = TestEnv::new(10).await;
    let worker = env.spawn_worker(&[]);
    worker.wait_ready().await;

    let id = publish_with(&env, Command::new(rust_example()), "rust-example");
    assert_stored(&env, &id, "rust-example").await;

    if let Some(python) = python_with_pika() {
        let mut example = Command::new(python);
        example.arg(repo().join("examples/publish_signup.py"));
        let id = publish_with(&env, example, "python-example");
        assert_stored(&env, &id, "python-example").await;
    }
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}
