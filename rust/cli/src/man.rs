//! The manual: vgpu-admin(1), one vgpu-admin-COMMAND(1) page per command, and vgpu.conf(5).
//!
//! Command pages are clap_mangen's rendering of the clap definitions (so every option is there),
//! followed by the examples of the command's `after_help`, the exit status and links.

use crate::cli::{Cli, BIN, CONFIG_PAGE};
use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Inline, Roff};
use clap_mangen::Man;
use registry::Error;
use std::path::{Path, PathBuf};

const MANUAL: &str = "vgpu-registry";
const CONFIG_PATH: &str = "/etc/vgpu/vgpu.conf";
const DB_PATH: &str = "/etc/vgpu/vgpu_config.db";

const EXIT_STATUS: &str =
    "0 success, 2 invalid usage or argument (nothing was changed), 1 any other failure.";

/// One page: where it goes in a man tree and its roff text.
struct Page {
    name: String,
    section: &'static str,
    text: String,
}

impl Page {
    fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }
}

/// `vgpu-admin man [PAGE]`: the main page, a command's page or the configuration page.
pub fn print(page: Option<&str>) -> Result<(), Error> {
    let wanted = match page {
        None => BIN.to_string(),
        Some(CONFIG_PAGE) => CONFIG_PAGE.to_string(),
        Some(command) => format!("{BIN}-{command}"),
    };
    let page = pages()
        .into_iter()
        .find(|p| p.name == wanted)
        .ok_or_else(|| {
            Error::invalid(
                "page",
                page.unwrap_or_default(),
                format!("expected a command of {BIN} or {CONFIG_PAGE}"),
            )
        })?;
    crate::write_out(&page.text);
    Ok(())
}

/// `vgpu-admin man --out-dir DIR`: every page into the man tree DIR (DIR/man1, DIR/man5).
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut written = Vec::new();
    for page in pages() {
        let sub = dir.join(format!("man{}", page.section));
        let path = sub.join(page.file_name());
        std::fs::create_dir_all(&sub)
            .and_then(|()| std::fs::write(&path, &page.text))
            .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

fn pages() -> Vec<Page> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let commands: Vec<&clap::Command> =
        cli.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let links: Vec<(String, &str)> = commands
        .iter()
        .map(|c| (format!("{BIN}-{}", c.get_name()), "1"))
        .chain([(CONFIG_PAGE.to_string(), "5")])
        .collect();
    let mut pages = vec![Page {
        name: BIN.to_string(),
        section: "1",
        text: command_page(&cli, main_page_tail(&links)),
    }];
    for sub in &commands {
        let tail = vec![
            Section::paragraphs("EXIT STATUS", &[EXIT_STATUS]),
            Section::links(&[(BIN.to_string(), "1"), (CONFIG_PAGE.to_string(), "5")]),
        ];
        pages.push(Page {
            name: format!("{BIN}-{}", sub.get_name()),
            section: "1",
            text: command_page(sub, tail),
        });
    }
    pages.push(Page {
        name: CONFIG_PAGE.to_string(),
        section: "5",
        text: config_page(),
    });
    pages
}

/// clap_mangen's page of `cmd`, its examples, then `tail`.
fn command_page(cmd: &clap::Command, tail: Vec<Roff>) -> String {
    let examples = cmd
        .get_after_help()
        .map(|h| examples(&h.to_string()))
        .unwrap_or_default();
    // The help's usage is broken for 80 columns, roff fills the synopsis itself; the examples
    // get their own section instead of clap_mangen's EXTRA.
    let plain = cmd
        .clone()
        .override_usage(None::<&'static str>)
        .after_help(None::<&'static str>)
        .version(None::<&'static str>);
    let name = plain.get_display_name().unwrap_or(BIN).to_string();
    let man = Man::new(plain)
        .title(name.to_uppercase())
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .manual(MANUAL);
    let mut buf = Vec::new();
    // Writing into memory cannot fail.
    let _ = man.render(&mut buf);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if !examples.is_empty() {
        text.push_str(&Section::examples(&examples).render());
    }
    for section in tail {
        text.push_str(&section.render());
    }
    text
}

fn main_page_tail(links: &[(String, &str)]) -> Vec<Roff> {
    vec![
        Section::paragraphs("EXIT STATUS", &[EXIT_STATUS]),
        Section::definitions(
            "ENVIRONMENT",
            &[
                ("VGPU_CONFIG, VGPU_DB, VGPU_XAPI, VGPU_XAPI_USER",
                 "Defaults for --config, --db, --xapi and --xapi-user (the options take precedence)."),
                ("VGPU_XAPI_PASSWORD",
                 "The XAPI password for http(s) endpoints, when --xapi-password-file is not given."),
                ("VGPU_XAPI_SESSION", "An existing XAPI session to use instead of logging in."),
                ("VGPU_HOST_UUID",
                 "This host's uuid, instead of INSTALLATION_UUID in /etc/xensource-inventory."),
                ("NO_COLOR", "No colour in tables, even on a terminal."),
            ],
        ),
        Section::definitions(
            "FILES",
            &[
                (CONFIG_PATH, "The configuration file (TOML, optional); see vgpu.conf(5)."),
                (DB_PATH,
                 "The registry (SQLite), on the pool master; the file the mediator reads."),
                ("/etc/xensource-inventory",
                 "Gives this host's uuid; on a pool member every command is forwarded to the \
                  master's vgpu plugin."),
            ],
        ),
        Section::links(links),
    ]
}

/// The example commands of an `after_help`: `Example: …` lines, or the indented lines under an
/// `Examples:` heading; a line ending in ` \` goes on with the next one, indented as it is
/// relative to the command.
fn examples(after_help: &str) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut margin = 0;
    let mut continued = false;
    let mut in_block = false;
    for line in after_help.lines() {
        if continued {
            let blank = line.len() - line.trim_start().len();
            if let Some(last) = found.last_mut() {
                last.push(line[blank.min(margin)..].trim_end().to_string());
            }
        } else if let Some(command) = line.strip_prefix("Example: ") {
            margin = "Example: ".len();
            found.push(vec![command.trim().to_string()]);
        } else if line == "Examples:" {
            in_block = true;
            continue;
        } else if in_block && line.starts_with("  ") {
            margin = line.len() - line.trim_start().len();
            found.push(vec![line.trim().to_string()]);
        } else {
            in_block = false;
            continue;
        }
        continued = line.ends_with('\\');
    }
    found
}

/// One key of vgpu.conf: its table (None: the top level), name, value as written in the file
/// (the default, or an example where there is none) and meaning.
struct Key {
    table: Option<&'static str>,
    name: &'static str,
    value: &'static str,
    default: bool,
    help: &'static str,
}

const fn key(name: &'static str, value: &'static str, help: &'static str) -> Key {
    Key {
        table: None,
        name,
        value,
        default: true,
        help,
    }
}

const CONFIG_KEYS: &[Key] = &[
    key(
        "db_path",
        "\"/etc/vgpu/vgpu_config.db\"",
        "The registry (SQLite). --db and VGPU_DB take precedence.",
    ),
    key(
        "xapi",
        "\"unix:/var/lib/xcp/xapi\"",
        "The XAPI endpoint: unix:/path, http://host[:port] or https://host[:port]; dom0's \
         local socket needs no password. --xapi and VGPU_XAPI take precedence.",
    ),
    key(
        "xapi_user",
        "\"root\"",
        "User for http(s) endpoints. --xapi-user and VGPU_XAPI_USER take precedence.",
    ),
    Key {
        default: false,
        ..key(
            "xapi_password_file",
            "\"/etc/vgpu/xapi-password\"",
            "File holding the XAPI password for http(s) endpoints, mode 0600: one that other \
             users can read is refused. --xapi-password-file takes precedence; without either, \
             VGPU_XAPI_PASSWORD.",
        )
    },
    key(
        "xapi_insecure",
        "false",
        "Accept any TLS certificate from an https endpoint (self-signed pool certificates).",
    ),
    Key {
        default: false,
        ..key(
            "xapi_ca_file",
            "\"/etc/vgpu/pool-master.pem\"",
            "A PEM certificate to trust for https endpoints, e.g. the pool master's.",
        )
    },
    key(
        "xapi_connect_timeout_s",
        "10",
        "Seconds to wait for a connection to XAPI.",
    ),
    key(
        "xapi_timeout_s",
        "120",
        "Seconds to wait for an answer from XAPI.",
    ),
    key(
        "lock_timeout_s",
        "60",
        "Seconds a change waits for another process's lock on the registry (at least 1).",
    ),
    key(
        "mode",
        "\"local\"",
        "\"local\": use this host's registry (on the master, or off the pool); \"remote\": \
         forward every command to the pool master's vgpu plugin, as --remote does.",
    ),
    key(
        "python_path",
        "\"/usr/lib64/vgpu-registry/python\"",
        "Where the xapi plugin finds the vgpu_registry extension.",
    ),
    key(
        "admin_path",
        "\"/usr/bin/vgpu-admin\"",
        "The vgpu-admin the xapi plugin runs where the extension cannot load (Python 2.7).",
    ),
    Key {
        table: Some("device"),
        ..key(
            "type",
            "\"vgpu-cuda\"",
            "The QEMU device written into device-model-args (letters, digits, '-', '_', '.').",
        )
    },
    Key {
        table: Some("device"),
        ..key(
            "extra",
            "\"addr=5\"",
            "Properties written right after the type on a new entry; no spaces, and not \
             pool_id, priority or vm_id, which vgpu-admin writes itself.",
        )
    },
    Key {
        table: Some("restart"),
        ..key(
            "shutdown_timeout_s",
            "120",
            "Seconds --restart waits for a clean shutdown (at least 1).",
        )
    },
    Key {
        table: Some("pool"),
        ..key(
            "refresh_timeout_s",
            "10",
            "Seconds the pool master waits for the other hosts to refresh their replicas \
             after a change (at least 1); a host that takes longer is reported, not waited for.",
        )
    },
    Key {
        table: Some("mediator"),
        ..key(
            "admin_socket",
            "\"/var/vgpu/admin.sock\"",
            "The GPU mediator's admin socket on each host; a host without it has no mediator \
             and is skipped.",
        )
    },
    Key {
        table: Some("mediator"),
        ..key(
            "timeout_s",
            "2",
            "Seconds one request to a mediator may take, from connecting to the last byte of \
             its answer (at least 1).",
        )
    },
];

fn config_page() -> String {
    let mut head = Roff::new();
    head.control(
        "TH",
        [
            "VGPU.CONF",
            "5",
            "",
            &format!("{BIN} {}", env!("CARGO_PKG_VERSION")),
            MANUAL,
        ],
    );
    head.control("SH", ["NAME"]);
    head.text([roman(
        "vgpu.conf - configuration of vgpu-admin and of the vgpu xapi plugin",
    )]);
    head.control("SH", ["SYNOPSIS"]);
    head.text([bold(CONFIG_PATH)]);
    head.control("SH", ["DESCRIPTION"]);
    head.text([roman(
        "TOML. Every key is optional and a missing file means the defaults below; an unknown \
         key or a bad value is an error naming the file and the key, so a typo never falls \
         back silently. vgpu-admin --config PATH or VGPU_CONFIG name another file. Command-line \
         options and environment variables take precedence over the file.",
    )]);
    let mut text = head.render();
    let mut tables: Vec<Option<&str>> = Vec::new();
    for k in CONFIG_KEYS {
        if !tables.contains(&k.table) {
            tables.push(k.table);
        }
    }
    for table in &tables {
        let mut r = Roff::new();
        let title = table.map_or("KEYS".to_string(), |t| format!("[{t}]"));
        r.control("SH", [title.as_str()]);
        for k in CONFIG_KEYS.iter().filter(|k| &k.table == table) {
            r.control("TP", []);
            let shown = if k.default {
                "default"
            } else {
                "no default; e.g."
            };
            r.text([bold(k.name), roman(format!(" ({shown} {})", k.value))]);
            r.text([roman(k.help)]);
        }
        text.push_str(&r.render());
    }
    let mut example = vec!["# the defaults; the keys without one commented out".to_string()];
    for table in &tables {
        if let Some(t) = table {
            example.push(String::new());
            example.push(format!("[{t}]"));
        }
        for k in CONFIG_KEYS.iter().filter(|k| &k.table == table) {
            let comment = if k.default { "" } else { "# " };
            example.push(format!("{comment}{} = {}", k.name, k.value));
        }
    }
    let mut r = Roff::new();
    r.control("SH", ["EXAMPLE"]);
    preformatted(&mut r, &example);
    text.push_str(&r.render());
    text.push_str(&Section::links(&[(BIN.to_string(), "1")]).render());
    text
}

/// Builders of the sections added to clap_mangen's pages.
struct Section;

impl Section {
    fn paragraphs(title: &str, paragraphs: &[&str]) -> Roff {
        let mut r = Roff::new();
        r.control("SH", [title]);
        for (i, p) in paragraphs.iter().enumerate() {
            if i > 0 {
                r.control("PP", []);
            }
            r.text([roman(*p)]);
        }
        r
    }

    fn definitions(title: &str, items: &[(&str, &str)]) -> Roff {
        let mut r = Roff::new();
        r.control("SH", [title]);
        for (term, meaning) in items {
            r.control("TP", []);
            r.text([bold(*term)]);
            r.text([roman(*meaning)]);
        }
        r
    }

    fn examples(examples: &[Vec<String>]) -> Roff {
        let mut r = Roff::new();
        r.control("SH", ["EXAMPLES"]);
        for (i, lines) in examples.iter().enumerate() {
            if i > 0 {
                r.control("PP", []);
            }
            preformatted(&mut r, lines);
        }
        r
    }

    fn links(pages: &[(String, &str)]) -> Roff {
        let mut r = Roff::new();
        r.control("SH", ["SEE ALSO"]);
        let mut line: Vec<Inline> = Vec::new();
        for (i, (name, section)) in pages.iter().enumerate() {
            if i > 0 {
                line.push(roman(", "));
            }
            line.push(bold(name.as_str()));
            line.push(roman(format!("({section})")));
        }
        r.text(line);
        r
    }
}

/// Lines kept as they are (no filling), indented.
fn preformatted(r: &mut Roff, lines: &[String]) {
    r.control("RS", ["4"]);
    r.control("nf", []);
    for l in lines {
        r.text([roman(l.as_str())]);
    }
    r.control("fi", []);
    r.control("RE", []);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `vgpu.conf` takes, read from the core's definition of the file: the fields of
    /// `Config`, and of the structs of its tables (a field whose type is another struct of the
    /// file), under their serde names.
    fn keys_of_the_core() -> Vec<(Option<String>, String)> {
        let source = include_str!("../../registry/src/config.rs");
        let structs = [
            "Config",
            "DeviceConfig",
            "RestartConfig",
            "PoolConfig",
            "MediatorConfig",
        ];
        let fields = |name: &str| -> Vec<(String, String)> {
            let start = source
                .find(&format!("pub struct {name} {{"))
                .unwrap_or_else(|| panic!("no struct {name} in config.rs"));
            let body = &source[start..];
            let body = &body[..body.find("\n}").expect("end of struct")];
            let mut rename = None;
            let mut out = Vec::new();
            for line in body.lines().skip(1).map(str::trim) {
                if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
                    rename = r.split('"').next().map(str::to_string);
                } else if let Some(f) = line.strip_prefix("pub ") {
                    let (field, ty) = f.split_once(':').expect("a field");
                    let ty = ty.trim().trim_end_matches(',').to_string();
                    out.push((rename.take().unwrap_or_else(|| field.to_string()), ty));
                }
            }
            out
        };
        let mut keys = Vec::new();
        for (field, ty) in fields("Config") {
            if structs.contains(&ty.as_str()) {
                for (sub, _) in fields(&ty) {
                    keys.push((Some(field.clone()), sub));
                }
            } else {
                keys.push((None, field));
            }
        }
        keys
    }

    #[test]
    fn the_config_page_documents_every_key_of_the_file_and_no_other() {
        let mut documented: Vec<(Option<String>, String)> = CONFIG_KEYS
            .iter()
            .map(|k| (k.table.map(str::to_string), k.name.to_string()))
            .collect();
        let mut core = keys_of_the_core();
        assert!(core.len() > 10, "{core:?}");
        documented.sort();
        core.sort();
        assert_eq!(documented, core);
    }

    #[test]
    fn examples_are_read_from_both_forms_of_after_help() {
        let block = "Examples:\n  a b \\\n      --c d\n  e\n\nExit status: 0.";
        assert_eq!(
            examples(block),
            [
                vec!["a b \\".to_string(), "    --c d".into()],
                vec!["e".into()]
            ]
        );
        let lines = "Example: x \\\n             --y z\nExample: w";
        assert_eq!(
            examples(lines),
            [
                vec!["x \\".to_string(), "    --y z".into()],
                vec!["w".into()]
            ]
        );
    }

    #[test]
    fn every_visible_command_has_a_page_with_its_examples_and_links() {
        let all = pages();
        let cli = Cli::command();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{BIN}-{}", sub.get_name());
            let page = all.iter().find(|p| p.name == name).expect(&name);
            assert!(page.text.contains(".SH EXAMPLES"), "{name}");
            assert!(page.text.contains(".SH \"SEE ALSO\""), "{name}");
            let main = &all[0].text;
            assert!(
                main.contains(&format!("\\fB{}\\fR(1)", name.replace('-', "\\-"))),
                "{name}"
            );
        }
        assert!(all
            .iter()
            .all(|p| p.name != format!("{BIN}-{}", crate::cli::COMPLETE_COMMAND)));
        assert!(all
            .iter()
            .any(|p| p.name == CONFIG_PAGE && p.section == "5"));
    }
}
