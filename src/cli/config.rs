//! Config files for the daemons (`serve`, `license-server`).
//!
//! A TOML file with one table per command; keys are the command's long flag names and
//! values what the flag takes (a string or number; `true` for a switch; an array for a
//! flag given several times):
//!
//! ```toml
//! [serve]
//! license = "/var/lib/leasehold/node.license"
//! listen = "0.0.0.0:8080"
//! parallel = 8
//! ```
//!
//! Precedence: a flag on the command line, then the environment (`LEASEHOLD_` and the
//! flag's name in upper case with `_` for `-`: `LEASEHOLD_LISTEN`), then the file
//! (`--config FILE` or `LEASEHOLD_CONFIG`), then the built-in default. It is applied by
//! rewriting the command line before the real parse, so every value goes through the
//! same checks as a flag would. `leasehold config check FILE` validates a file with
//! line-precise errors.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, CommandFactory};

use super::{exit, Cli, ConfigCheckArgs, Outcome};

/// Commands that read a config file, and so its table names.
pub const SECTIONS: &[&str] = &["serve", "license-server"];

/// Arguments that are not settings.
const NOT_SETTINGS: &[&str] = &["config", "help", "version", "log_format"];

/// One setting from a file: the flag's arguments, and where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub line: usize,
    /// For a switch: empty (set) — a `false` switch is left out.
    pub values: Vec<String>,
    pub switch: bool,
}

/// A problem in a config file, at a line when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn settings_of(section: &str) -> Vec<Arg> {
    let cmd = Cli::command();
    cmd.find_subcommand(section)
        .map(|c| {
            c.get_arguments()
                .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()) && a.get_long().is_some())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Check one flag value with the flag's own parser; the error's first line.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default();
    let probe = clap::Command::new("leasehold")
        .no_binary_name(true)
        .arg(arg.clone().required(false).global(false));
    probe
        .try_get_matches_from([format!("--{long}={value}")])
        .map(|_| ())
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_string()
        })
}

/// Parse and check a config file: every table and key known, every value acceptable to
/// its flag. Returns the settings per table.
pub fn parse(text: &str) -> Result<BTreeMap<String, Vec<Setting>>, Vec<Problem>> {
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let mut out = BTreeMap::new();
    let root = doc.as_table();
    for (name, item) in root.iter() {
        let line = root
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .map(|s| line_of(text, s.start));
        let Some(table) = item.as_table() else {
            problems.push(Problem {
                line,
                message: format!(
                    "'{name}' is not a table; settings go under [serve] or [license-server]"
                ),
            });
            continue;
        };
        if !SECTIONS.contains(&name) {
            problems.push(Problem {
                line,
                message: format!(
                    "unknown table [{name}]; this file has [serve] and [license-server]"
                ),
            });
            continue;
        }
        let args = settings_of(name);
        let mut settings = Vec::new();
        for (key, value) in table.iter() {
            let line = table
                .get_key_value(key)
                .and_then(|(k, _)| k.span())
                .map(|s| line_of(text, s.start))
                .unwrap_or(0);
            let mut problem = |message: String| {
                problems.push(Problem {
                    line: Some(line),
                    message: format!("{name}.{key}: {message}"),
                })
            };
            let Some(arg) = args.iter().find(|a| a.get_long() == Some(key)) else {
                let known: Vec<&str> = args.iter().filter_map(|a| a.get_long()).collect();
                problem(format!(
                    "unknown setting; `leasehold {name}` takes: {}",
                    known.join(", ")
                ));
                continue;
            };
            let scalar = |v: &toml_edit::Value| -> Option<String> {
                match v {
                    toml_edit::Value::String(s) => Some(s.value().clone()),
                    toml_edit::Value::Integer(i) => Some(i.value().to_string()),
                    toml_edit::Value::Float(f) => Some(f.value().to_string()),
                    _ => None,
                }
            };
            let value = value.as_value();
            if is_switch(arg) {
                match value.and_then(toml_edit::Value::as_bool) {
                    Some(true) => settings.push(Setting {
                        key: key.to_string(),
                        line,
                        values: Vec::new(),
                        switch: true,
                    }),
                    Some(false) => {}
                    None => problem("a switch takes true or false".into()),
                }
                continue;
            }
            let values: Option<Vec<String>> = match value {
                Some(toml_edit::Value::Array(items)) => items.iter().map(scalar).collect(),
                Some(v) => scalar(v).map(|s| vec![s]),
                None => None,
            };
            let Some(values) = values else {
                problem("takes a string or a number (or an array of them)".into());
                continue;
            };
            let mut ok = true;
            for v in &values {
                if let Err(e) = check_value(arg, v) {
                    problem(e);
                    ok = false;
                }
            }
            if ok {
                settings.push(Setting {
                    key: key.to_string(),
                    line,
                    values,
                    switch: false,
                });
            }
        }
        out.insert(name.to_string(), settings);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn render(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match p.line {
            Some(line) => format!("{}:{line}: {}", path.display(), p.message),
            None => format!("{}: {}", path.display(), p.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn env_name(long: &str) -> String {
    format!("LEASEHOLD_{}", long.to_uppercase().replace('-', "_"))
}

/// Apply the environment and the config file to a daemon's command line (see the
/// module docs for the precedence). Other commands pass through unchanged.
pub fn layer(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Ok(matches) = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
    else {
        return Ok(argv);
    };
    let Some((section, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    if !SECTIONS.contains(&section) {
        return Ok(argv);
    }
    let config = sub
        .try_get_one::<std::path::PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let file = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
            let mut parsed = parse(&text).map_err(|p| {
                format!(
                    "{}\n(check it with `leasehold config check {}`)",
                    render(path, &p),
                    path.display()
                )
            })?;
            parsed.remove(section).unwrap_or_default()
        }
        None => Vec::new(),
    };
    let mut out = argv;
    for arg in settings_of(section) {
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or_default();
        let given = matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let env = env_name(long);
        if arg.get_env().is_none() {
            if let Some(value) = std::env::var_os(&env) {
                let text = value.to_string_lossy().to_string();
                if is_switch(&arg) {
                    match text.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" | "on" => out.push(format!("--{long}").into()),
                        "" | "0" | "false" | "no" | "off" => {}
                        _ => {
                            return Err(format!(
                                "{env}='{text}': a switch takes true or false (1 or 0)"
                            ))
                        }
                    }
                } else {
                    check_value(&arg, &text).map_err(|e| format!("{env}: {e}"))?;
                    let mut flag = OsString::from(format!("--{long}="));
                    flag.push(value);
                    out.push(flag);
                }
                continue;
            }
        }
        if let Some(setting) = file.iter().find(|s| s.key == long) {
            if setting.switch {
                out.push(format!("--{long}").into());
            }
            for v in &setting.values {
                out.push(format!("--{long}={v}").into());
            }
        }
    }
    Ok(out)
}

/// `leasehold config check FILE`.
pub fn check(args: ConfigCheckArgs) -> Outcome {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    match parse(&text) {
        Ok(sections) => {
            if args.json {
                let json: serde_json::Map<String, serde_json::Value> = sections
                    .iter()
                    .map(|(name, settings)| {
                        let values: serde_json::Map<String, serde_json::Value> = settings
                            .iter()
                            .map(|s| {
                                let v = if s.switch {
                                    serde_json::Value::Bool(true)
                                } else {
                                    serde_json::json!(s.values)
                                };
                                (s.key.clone(), v)
                            })
                            .collect();
                        (name.clone(), serde_json::Value::Object(values))
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"valid": true, "sections": json})
                    )?
                );
            } else {
                println!("{}: valid", args.file.display());
                for (name, settings) in &sections {
                    println!("[{name}]");
                    for s in settings {
                        if s.switch {
                            println!("  {} = true", s.key);
                        } else {
                            println!("  {} = {}", s.key, s.values.join(", "));
                        }
                    }
                }
            }
            Ok(exit::OK)
        }
        Err(problems) => {
            if args.json {
                let list: Vec<serde_json::Value> = problems
                    .iter()
                    .map(|p| serde_json::json!({"line": p.line, "message": p.message}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"valid": false, "problems": list})
                    )?
                );
            } else {
                eprintln!("{}", render(&args.file, &problems));
            }
            Ok(exit::USAGE)
        }
    }
}
