//! `agentregistry config get|set|toggle|env`: reads and writes the config record in
//! `<home>/config.bin`. Safe while the server runs: the record's two-slot write is atomic and
//! the server's watcher applies the new generation within 100 ms.
//!
//! Fields: `config_version`, `registry_url` (stores its MurmurHash3), `registry_hash`,
//! `flags` (the whole bitmask), one boolean per flag name (`private_registry`, ...),
//! `terminal.mode` (disabled|cooked|raw), `terminal.rows`, `terminal.cols`.
//! `config env` prints the record as `AGENTREGISTRY_*` variables; `serve` applies the same
//! variables at start (`apply_env`).

use std::fmt::Write as _;
use std::path::Path;

use engine::config_record::{
    registry_hash, ConfigFile, ConfigRecord, TerminalMode, FLAGS_KNOWN, FLAG_NAMES,
    FLAG_OPEN_REGISTRATION,
};

/// What `config` was asked to do.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print every field, or one.
    Get { field: Option<String> },
    /// Set a field: `flags 0x8`, `private_registry true`, `terminal.rows 40`, ...
    Set { field: String, value: String },
    /// Flip one flag: `private_registry`, `read_only`, `open_registration`, `debug`, ...
    Toggle { flag: String },
    /// Print the record as AGENTREGISTRY_* environment variables (they seed it at start).
    Env,
}

/// Runs a config command against `<home>/config.bin` and returns what to print.
///
/// # Errors
/// A message for the user: unknown field, bad value, unreadable record.
pub fn run(home: &Path, command: ConfigCommand) -> Result<String, String> {
    let path = home.join("config.bin");
    std::fs::create_dir_all(home).map_err(|e| format!("{}: {e}", home.display()))?;
    let initial = ConfigRecord::new(
        &format!("http://{}", crate::config::LISTEN_DEFAULT),
        FLAG_OPEN_REGISTRATION,
    );
    let (mut file, record) =
        ConfigFile::open_or_create(&path, &initial).map_err(|e| e.to_string())?;
    match command {
        ConfigCommand::Get { field: None } => Ok(describe(&record)),
        ConfigCommand::Get { field: Some(field) } => get(&record, &field),
        ConfigCommand::Set { field, value } => {
            let changed = set(record, &field, &value)?;
            let written = file.write(&changed).map_err(|e| e.to_string())?;
            Ok(format!(
                "{field} = {}\ngeneration {}\n",
                get(&written, &field)?.trim(),
                written.generation
            ))
        }
        ConfigCommand::Toggle { flag } => {
            let bit = flag_bit(&flag)?;
            let changed = ConfigRecord {
                flags: record.flags ^ bit,
                ..record
            };
            let written = file.write(&changed).map_err(|e| e.to_string())?;
            Ok(format!(
                "{flag} = {}\ngeneration {}\n",
                written.has(bit),
                written.generation
            ))
        }
        ConfigCommand::Env => Ok(env(&record)),
    }
}

fn flag_bit(name: &str) -> Result<u32, String> {
    FLAG_NAMES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, bit, _)| *bit)
        .ok_or_else(|| {
            let known: Vec<&str> = FLAG_NAMES.iter().map(|(n, _, _)| *n).collect();
            format!("unknown flag {name:?}; flags: {}", known.join(", "))
        })
}

fn describe(r: &ConfigRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "config_version = {}", r.config_version);
    let _ = writeln!(out, "registry_hash = 0x{:08x}", r.registry_hash);
    let _ = writeln!(out, "flags = 0x{:08x}", r.flags);
    for (name, bit, about) in FLAG_NAMES {
        let _ = writeln!(out, "{name} = {}    # {about}", r.has(*bit));
    }
    let _ = writeln!(out, "terminal.mode = {}", r.terminal_mode.name());
    let _ = writeln!(out, "terminal.rows = {}", r.terminal_rows);
    let _ = writeln!(out, "terminal.cols = {}", r.terminal_cols);
    let _ = writeln!(out, "generation = {}", r.generation);
    out
}

fn get(r: &ConfigRecord, field: &str) -> Result<String, String> {
    let value = match field {
        "config_version" => r.config_version.to_string(),
        "registry_hash" | "registry_url" => format!("0x{:08x}", r.registry_hash),
        "flags" => format!("0x{:08x}", r.flags),
        "terminal.mode" => r.terminal_mode.name().to_owned(),
        "terminal.rows" => r.terminal_rows.to_string(),
        "terminal.cols" => r.terminal_cols.to_string(),
        "generation" => r.generation.to_string(),
        flag => r.has(flag_bit(flag)?).to_string(),
    };
    Ok(format!("{value}\n"))
}

fn set(r: ConfigRecord, field: &str, value: &str) -> Result<ConfigRecord, String> {
    let bad = |what: &str| format!("{field}: {value:?} is not {what}");
    Ok(match field {
        "config_version" => match value {
            "0" => ConfigRecord {
                config_version: 0,
                ..r
            },
            "1" => ConfigRecord {
                config_version: 1,
                ..r
            },
            _ => return Err(bad("0 (legacy) or 1 (modern)")),
        },
        "registry_url" => ConfigRecord {
            registry_hash: registry_hash(value),
            ..r
        },
        "registry_hash" => ConfigRecord {
            registry_hash: parse_u32(value).ok_or_else(|| bad("a u32"))?,
            ..r
        },
        "flags" => {
            let flags = parse_u32(value).ok_or_else(|| bad("a u32"))?;
            if flags & !FLAGS_KNOWN != 0 {
                return Err(format!(
                    "flags: bits 0x{:x} are not defined (known: 0x{FLAGS_KNOWN:x})",
                    flags & !FLAGS_KNOWN
                ));
            }
            ConfigRecord { flags, ..r }
        }
        "terminal.mode" => ConfigRecord {
            terminal_mode: TerminalMode::from_name(value)
                .ok_or_else(|| bad("disabled, cooked or raw"))?,
            ..r
        },
        "terminal.rows" => ConfigRecord {
            terminal_rows: parse_dimension(value).ok_or_else(|| bad("1-255"))?,
            ..r
        },
        "terminal.cols" => ConfigRecord {
            terminal_cols: parse_dimension(value).ok_or_else(|| bad("1-255"))?,
            ..r
        },
        flag => {
            let bit = flag_bit(flag)?;
            let on = parse_bool(value).ok_or_else(|| bad("true/false (or 1/0, on/off)"))?;
            ConfigRecord {
                flags: if on { r.flags | bit } else { r.flags & !bit },
                ..r
            }
        }
    })
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_dimension(s: &str) -> Option<u8> {
    s.parse::<u8>().ok().filter(|&v| v >= 1)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

fn env_name(flag: &str) -> String {
    format!("AGENTREGISTRY_FLAG_{}", flag.to_ascii_uppercase())
}

fn env(r: &ConfigRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "AGENTREGISTRY_CONFIG_VERSION={}", r.config_version);
    let _ = writeln!(out, "AGENTREGISTRY_FLAGS=0x{:08x}", r.flags);
    for (name, bit, _) in FLAG_NAMES {
        let _ = writeln!(out, "{}={}", env_name(name), u8::from(r.has(*bit)));
    }
    let _ = writeln!(
        out,
        "AGENTREGISTRY_TERMINAL_MODE={}",
        r.terminal_mode.name()
    );
    let _ = writeln!(out, "AGENTREGISTRY_TERMINAL_ROWS={}", r.terminal_rows);
    let _ = writeln!(out, "AGENTREGISTRY_TERMINAL_COLS={}", r.terminal_cols);
    out
}

/// Applies the `AGENTREGISTRY_*` variables that `config env` prints (read through `var`) to
/// `r`. `AGENTREGISTRY_FLAGS` applies first, then the per-flag variables.
///
/// # Errors
/// A message naming the variable with a bad value.
pub fn apply_env(
    mut r: ConfigRecord,
    var: impl Fn(&str) -> Option<String>,
) -> Result<ConfigRecord, String> {
    let apply = |name: &str, field: &str, r: ConfigRecord| -> Result<ConfigRecord, String> {
        match var(name) {
            Some(value) => set(r, field, value.trim()).map_err(|e| format!("{name}: {e}")),
            None => Ok(r),
        }
    };
    r = apply("AGENTREGISTRY_CONFIG_VERSION", "config_version", r)?;
    r = apply("AGENTREGISTRY_FLAGS", "flags", r)?;
    for (name, _, _) in FLAG_NAMES {
        r = apply(&env_name(name), name, r)?;
    }
    r = apply("AGENTREGISTRY_TERMINAL_MODE", "terminal.mode", r)?;
    r = apply("AGENTREGISTRY_TERMINAL_ROWS", "terminal.rows", r)?;
    r = apply("AGENTREGISTRY_TERMINAL_COLS", "terminal.cols", r)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_round_trips_through_apply_env() {
        let mut r = ConfigRecord::new("http://127.0.0.1:4873", 0);
        r = set(r, "private_registry", "true").unwrap();
        r = set(r, "terminal.mode", "raw").unwrap();
        r = set(r, "terminal.rows", "40").unwrap();
        let vars: HashMap<String, String> = env(&r)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let fresh = ConfigRecord::new("http://127.0.0.1:4873", FLAG_OPEN_REGISTRATION);
        let seeded = apply_env(fresh, |k| vars.get(k).cloned()).unwrap();
        assert_eq!(seeded, r);
    }

    #[test]
    fn bad_values_are_refused() {
        let r = ConfigRecord::new("http://x", 0);
        assert!(set(r, "terminal.rows", "0").is_err());
        assert!(set(r, "terminal.mode", "weird").is_err());
        assert!(set(r, "nonsense", "1").is_err());
        assert!(set(r, "flags", "0x80000000").is_err());
        assert!(apply_env(r, |k| (k == "AGENTREGISTRY_FLAG_DEBUG")
            .then(|| "maybe".into()))
        .is_err());
    }
}
