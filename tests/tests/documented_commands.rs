//! Every `cargo run --release -p PROGRAM -- ARGS` command in the READMEs and docs/ is parsed by the program it
//! names, with `--help` appended: a flag that the docs use but the program does not have (renamed, removed,
//! misspelt) or a value it cannot read fails here, naming the file and line. The commands themselves are not
//! run (most train for minutes or need data and a GPU).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The documented commands of `file`: (line, program, arguments), with `\` continuations joined, comments
/// and `[…]` (optional parts) dropped, and shell variables or placeholders left out.
fn commands(file: &Path) -> Vec<(usize, String, Vec<String>)> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let mut cmd = String::new();
        loop {
            let l = lines[i];
            // The command part of the line, before a comment.
            let l = l.split(" #").next().unwrap().trim_end();
            if let Some(cont) = l.strip_suffix('\\') {
                cmd.push_str(cont);
                cmd.push(' ');
                i += 1;
                if i == lines.len() {
                    break;
                }
            } else {
                cmd.push_str(l);
                i += 1;
                break;
            }
        }
        let Some(at) = cmd.find("cargo run --release -p ") else {
            continue;
        };
        // Inline code wrapped over prose lines: joined up to its closing backtick.
        if cmd[..at].ends_with('`') {
            while !cmd[at..].contains('`') && i < lines.len() {
                cmd.push(' ');
                cmd.push_str(lines[i].trim());
                i += 1;
            }
        }
        let words: Vec<&str> = cmd[at..].split_whitespace().collect();
        // cargo run --release -p PROGRAM [--features F] [--example E] [-- ARGS]
        let program: String = words[4]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        // Inline code (`cargo run … -- ARGS`) ends at the word with the closing backtick.
        let inline_end = words[4].contains('`');
        if words.contains(&"--example") {
            continue;
        }
        let mut args = Vec::new();
        if let (Some(p), false) = (words.iter().position(|w| *w == "--"), inline_end) {
            for w in &words[p + 1..] {
                // A pipe, a redirection (`>`, `2>&1`) or the next command ends the arguments.
                if w.starts_with('|') || w.contains('>') || *w == "&&" || *w == ";" {
                    break;
                }
                let (part, closes) = match w.find('`') {
                    Some(k) => (&w[..k], true),
                    None => (*w, false),
                };
                args.push(part.trim_matches(|c| c == '[' || c == ']').to_string());
                if closes {
                    break;
                }
            }
        }
        // A shell variable or a `$(…)` cannot be read here: such commands are skipped.
        if args.iter().any(|a| a.contains('$')) {
            continue;
        }
        out.push((
            start + 1,
            program,
            args.into_iter().filter(|a| !a.is_empty()).collect(),
        ));
    }
    out
}

fn markdown(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            markdown(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

/// The workspace's programs.
const PROGRAMS: [&str; 4] = ["vsdm-image", "vsdm-timeseries", "vsdm-eval", "vsdm-toys"];

#[test]
fn documented_commands_parse() {
    let root = vsdm_tests::workspace();
    let mut files = vec![root.join("README.md")];
    for c in std::fs::read_dir(root.join("crates")).unwrap() {
        let readme = c.unwrap().path().join("README.md");
        if readme.is_file() {
            files.push(readme);
        }
    }
    markdown(&root.join("docs"), &mut files);
    let (mut checked, mut failures) = (0, Vec::new());
    for f in &files {
        for (line, program, args) in commands(f) {
            if !PROGRAMS.contains(&program.as_str()) {
                failures.push(format!("{}:{line}: no program {program}", f.display()));
                continue;
            }
            let Some(bin) = vsdm_tests::binary(&program) else {
                println!(
                    "skipped: no {program} binary beside the tests (run `cargo test --workspace`)"
                );
                return;
            };
            let out = Command::new(&bin)
                .args(&args)
                .arg("--help")
                .env("HF_HUB_OFFLINE", "1")
                .output()
                .unwrap();
            checked += 1;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                failures.push(format!(
                    "{}:{line}: {program} {}: {}",
                    f.strip_prefix(&root).unwrap().display(),
                    args.join(" "),
                    err.lines().next().unwrap_or("")
                ));
            }
        }
    }
    println!("{checked} documented commands parsed");
    assert!(checked > 50, "only {checked} documented commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
