//! What a package ships beside the binary, generated from the binary itself so it cannot drift
//! from it: the man pages of the command line (clap_mangen), memscale.toml(5) and
//! memscale-policy(5) rendered from the operator documentation built into the binary, and
//! the bash, zsh and fish completions (clap_complete). `memscale package-assets DIR`
//! (hidden) writes them; `scripts/deb.sh` calls it.

use crate::cli::Cli;
use clap::CommandFactory;
use std::path::{Path, PathBuf};

/// The documentation the section-5 pages are made of, as this binary was built with it.
const CONFIG_MD: &str = include_str!("../docs/config.md");
const POLICIES_MD: &str = include_str!("../docs/policies.md");

/// `memscale package-assets DIR`: the exit code.
pub fn write(dir: &Path) -> i32 {
    match write_to(dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            0
        }
        Err((path, e)) => {
            eprintln!("memscale: {}: {e}", path.display());
            crate::exit::EXIT_RUNTIME
        }
    }
}

type Failed = (PathBuf, std::io::Error);

fn create(path: &Path, text: &[u8]) -> Result<PathBuf, Failed> {
    std::fs::write(path, text).map_err(|e| (path.to_path_buf(), e))?;
    Ok(path.to_path_buf())
}

/// Writes every asset under `dir`; the files written, or the first that failed.
pub fn write_to(dir: &Path) -> Result<Vec<PathBuf>, Failed> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).map_err(|e| (d.clone(), e))?;
    }
    let mut files = Vec::new();
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, &man, &mut files)?;
    let version = env!("CARGO_PKG_VERSION");
    files.push(create(
        &man.join("memscale.toml.5"),
        markdown_to_man("memscale.toml", "5", version, CONFIG_MD).as_bytes(),
    )?);
    files.push(create(
        &man.join("memscale-policy.5"),
        markdown_to_man("memscale-policy", "5", version, POLICIES_MD).as_bytes(),
    )?);
    use clap_complete::Shell;
    for (shell, name) in [
        (Shell::Bash, "memscale"),
        (Shell::Zsh, "_memscale"),
        (Shell::Fish, "memscale.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "memscale", &mut buf);
        files.push(create(&comp.join(name), &buf)?);
    }
    Ok(files)
}

/// memscale(8) and one page per visible subcommand (memscale-run(8), …): a daemon and its
/// administration commands belong in section 8.
fn man_pages(cmd: &clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Failed> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, files)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("memscale {}", env!("CARGO_PKG_VERSION")));
    let mut buf = Vec::new();
    page.render(&mut buf)
        .map_err(|e| (dir.join(page.get_filename()), e))?;
    files.push(create(&dir.join(page.get_filename()), &buf)?);
    Ok(())
}

/// Text safe in roff: backslashes doubled and a leading `.` or `'` defused.
fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Inline markdown: `code` and **strong** in bold.
fn inline(s: &str) -> String {
    let mut out = String::new();
    let mut bold = false;
    let text = roff_escape(s).replace("**", "`");
    for c in text.chars() {
        if c == '`' {
            out.push_str(if bold { "\\fR" } else { "\\fB" });
            bold = !bold;
        } else {
            out.push(c);
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    out
}

/// The operator documentation as a man page: headings become sections, code blocks stay
/// verbatim, table rows become tagged paragraphs (first column the tag).
pub fn markdown_to_man(name: &str, section: &str, version: &str, md: &str) -> String {
    let mut out = format!(
        ".TH {} {section} \"\" \"memscale {version}\" \"File Formats\"\n",
        name.to_uppercase().replace('-', "\\-")
    );
    let mut lines = md.lines().peekable();
    // The first heading is the page's NAME line.
    if let Some(first) = lines.peek()
        && let Some(title) = first.strip_prefix("# ")
    {
        out.push_str(&format!(
            ".SH NAME\n{} \\- {}\n.SH DESCRIPTION\n",
            roff_escape(name),
            roff_escape(&title.to_lowercase())
        ));
        lines.next();
    }
    let mut in_code = false;
    for l in lines {
        if l.starts_with("```") {
            out.push_str(if in_code {
                ".fi\n.RE\n"
            } else {
                ".RS 2\n.nf\n"
            });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&roff_escape(l));
            out.push('\n');
            continue;
        }
        if let Some(h) = l.strip_prefix("### ") {
            out.push_str(&format!(".SS \"{}\"\n", inline(h)));
        } else if let Some(h) = l.strip_prefix("## ") {
            out.push_str(&format!(".SH \"{}\"\n", inline(h).to_uppercase()));
        } else if l.starts_with('|') {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR\n{}\n",
                inline(cells[0]),
                cells[1..]
                    .iter()
                    .map(|c| inline(c))
                    .collect::<Vec<_>>()
                    .join(" \\(em ")
            ));
        } else if l.trim().is_empty() {
            out.push_str(".PP\n");
        } else if let Some(item) = l.strip_prefix("- ") {
            out.push_str(&format!(".IP \\(bu 2\n{}\n", inline(item)));
        } else {
            out.push_str(&inline(l.trim_start()));
            out.push('\n');
        }
    }
    if in_code {
        out.push_str(".fi\n.RE\n");
    }
    out.push_str(
        ".SH \"SEE ALSO\"\n.BR memscale (8),\n.BR memscale\\-run (8),\n.BR memscale\\-check (8)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_written_and_the_pages_name_their_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_to(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for n in [
            "memscale.8",
            "memscale-run.8",
            "memscale-check.8",
            "memscale.toml.5",
            "memscale-policy.5",
            "memscale",
            "_memscale",
            "memscale.fish",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("package-assets")),
            "the hidden command has no page: {names:?}"
        );
        let run = std::fs::read_to_string(dir.path().join("man/memscale-run.8")).unwrap();
        assert!(run.contains("\\-\\-policies"), "{run}");
        let toml = std::fs::read_to_string(dir.path().join("man/memscale.toml.5")).unwrap();
        assert!(toml.starts_with(".TH MEMSCALE.TOML 5"), "{toml}");
        assert!(toml.contains("api_token_file"), "{toml}");
        let pol = std::fs::read_to_string(dir.path().join("man/memscale-policy.5")).unwrap();
        assert!(
            pol.contains(".TP\n\\fBheadroom\\fR"),
            "the knob table: {pol}"
        );
        let bash = std::fs::read_to_string(dir.path().join("completions/memscale")).unwrap();
        assert!(bash.contains("--explain"), "{bash}");
    }

    #[test]
    fn roff_control_characters_at_line_start_are_defused() {
        let page = markdown_to_man("x", "5", "0", "# X\n.not a request\n'nor this\na\\b\n");
        assert!(page.contains("\\&.not a request"), "{page}");
        assert!(page.contains("\\&'nor this"), "{page}");
        assert!(page.contains("a\\eb"), "{page}");
    }
}
