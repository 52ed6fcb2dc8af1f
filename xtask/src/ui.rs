//! What the tasks print: sections, headings, indented notes, and the commands they run.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

fn bold(text: &str) -> String {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    if *TERMINAL.get_or_init(|| std::io::stdout().is_terminal()) {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

pub fn section(title: &str) {
    println!("\n{}", bold(&format!("==== {title} ====")));
}

pub fn heading(title: &str) {
    println!("\n{}", bold(title));
}

pub fn note(text: &str) {
    println!("  {text}");
}

/// Echoes what is about to run, as `set -x` would.
pub fn show(command: &str) {
    println!("+ {command}");
}
