//! Files generated from the command definitions: shell completions and man pages
//! (`leasehold completions SHELL`, `leasehold man`), so they never drift from `--help`.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use super::{exit, Cli, CompletionsArgs, ManArgs, Outcome};
use crate::fsutil::{self, Replace};

pub fn completions(args: CompletionsArgs) -> Outcome {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "leasehold", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(exit::OK)
}

/// Render `cmd`'s man page (roff).
fn render(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(out)
}

pub fn man(args: ManArgs) -> Outcome {
    let mut cmd = Cli::command();
    cmd.build();
    let Some(dir) = &args.out_dir else {
        std::io::stdout().write_all(&render(cmd)?)?;
        return Ok(exit::OK);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("leasehold.1".to_string(), cmd.clone())];
    // One page per command and per nested command: leasehold-admin-revoke.1.
    let mut stack: Vec<(String, clap::Command)> = cmd
        .get_subcommands()
        .map(|s| (format!("leasehold-{}", s.get_name()), s.clone()))
        .collect();
    while let Some((name, sub)) = stack.pop() {
        if sub.get_name() == "help" {
            continue;
        }
        for nested in sub.get_subcommands() {
            stack.push((format!("{name}-{}", nested.get_name()), nested.clone()));
        }
        pages.push((format!("{name}.1"), sub.name(name.clone())));
    }
    pages.sort_by(|a, b| a.0.cmp(&b.0));
    for (file, page) in &pages {
        let path = dir.join(file);
        fsutil::write_atomic(
            &path,
            &render(page.clone())?,
            fsutil::PUBLIC_MODE,
            Replace::Allowed,
        )?;
    }
    println!("{} man pages written to {}", pages.len(), dir.display());
    Ok(exit::OK)
}
