//! Drop-ins: `outpost.d/*.toml` beside the main file, applied in file-name order on top of it
//! (the adapter, `outpost::io::config`, finds and reads them),
//! so an installer (or a provisioning tool) adds a serial line or a Modbus device without editing
//! the packaged `outpost.toml`.
//!
//! Merge rules: tables merge key by key; arrays of tables (`[[serial]]`, `[[modbus.device]]`, …)
//! append, the main file's entries first; any other value is replaced by the later file's. Every
//! problem is still located in the file, line and key it comes from: the merge records where
//! each key of the merged document came from.

use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::{
    Config, ConfigError, ConfigErrors, Document, Environment, Problem, RawConfig, compile,
};

/// One file of the layered configuration.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub text: String,
}

/// Where a key of the merged document came from: (merged key, layer, key in that layer).
#[derive(Debug, Default)]
struct Origins(Vec<(String, usize, String)>);

impl Origins {
    fn record(&mut self, merged: &str, layer: usize, own: &str) {
        self.0.push((merged.to_owned(), layer, own.to_owned()));
    }

    /// The layer and own key of `key`, by its longest recorded prefix; the main file for a key
    /// no file has (a default).
    fn locate(&self, key: &str) -> (usize, String) {
        let is_prefix = |prefix: &str| {
            key == prefix
                || key
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        self.0
            .iter()
            .rev() // later layers override earlier ones
            .filter(|(merged, _, _)| is_prefix(merged))
            .max_by_key(|(merged, _, _)| merged.len())
            .map_or((0, key.to_owned()), |(merged, layer, own)| {
                (*layer, format!("{own}{}", &key[merged.len()..]))
            })
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn is_array_of_tables(value: &toml::Value) -> bool {
    value
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(toml::Value::is_table))
}

/// Merges `src` (of `layer`) into `dst`, recording every key's origin.
fn merge(
    dst: &mut toml::Table,
    src: toml::Table,
    layer: usize,
    (dst_prefix, src_prefix): (&str, &str),
    origins: &mut Origins,
) {
    for (key, value) in src {
        let (merged_key, own_key) = (join(dst_prefix, &key), join(src_prefix, &key));
        match (dst.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge(existing, table, layer, (&merged_key, &own_key), origins);
            }
            (Some(existing @ toml::Value::Array(_)), value @ toml::Value::Array(_))
                if is_array_of_tables(existing) && is_array_of_tables(&value) =>
            {
                let toml::Value::Array(items) = value else {
                    unreachable!("matched above")
                };
                let toml::Value::Array(existing) = existing else {
                    unreachable!("matched above")
                };
                for (i, item) in items.into_iter().enumerate() {
                    let merged = format!("{merged_key}[{}]", existing.len());
                    origins.record(&merged, layer, &format!("{own_key}[{i}]"));
                    existing.push(item);
                }
            }
            (_, value) => {
                origins.record(&merged_key, layer, &own_key);
                dst.insert(key, value);
            }
        }
    }
}

/// Parses and validates the main file and its drop-ins as one configuration. Relative paths in
/// any of them (Modbus maps) are taken from `config_dir`, the main file's folder.
pub fn parse_layers(
    layers: &[Layer],
    config_dir: &Path,
    env: &dyn Environment,
) -> Result<Config, ConfigErrors> {
    let docs: Vec<Document<'_>> = layers
        .iter()
        .map(|l| Document {
            path: &l.path,
            text: &l.text,
        })
        .collect();
    // Syntax, file by file.
    let mut errors = Vec::new();
    let mut spans = Vec::new();
    let mut tables = Vec::new();
    for doc in &docs {
        match (
            DeTable::parse(doc.text),
            toml::from_str::<toml::Table>(doc.text),
        ) {
            (Ok(spanned), Ok(table)) => {
                spans.push(spanned);
                tables.push(table);
            }
            (Err(e), _) => errors.push(doc.toml_error(&e, "", None)),
            (_, Err(e)) => errors.push(doc.toml_error(&e, "", None)),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut merged = toml::Table::new();
    let mut origins = Origins::default();
    for (layer, table) in tables.into_iter().enumerate() {
        merge(&mut merged, table, layer, ("", ""), &mut origins);
    }
    let locate = |key: &str| -> (usize, String, Option<usize>) {
        let (layer, own) = origins.locate(key);
        let line = docs[layer].line_of_key(&spans[layer], &own);
        (layer, own, line)
    };
    // Stage one on the merged document.
    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let (layer, own, line) = locate(&key);
            ConfigErrors(vec![ConfigError {
                file: layers[layer].path.clone(),
                line,
                key: own,
                message: e.inner().message().trim().to_owned(),
            }])
        })?;
    // Stage two.
    let mut config = compile(raw, config_dir, env).map_err(|problems: Vec<Problem>| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| {
                    let (layer, own, line) = locate(&p.key);
                    ConfigError {
                        file: layers[layer].path.clone(),
                        line,
                        key: own,
                        message: p.message,
                    }
                })
                .collect(),
        )
    })?;
    for warning in &mut config.warnings {
        let (layer, own, line) = locate(&warning.key);
        warning.file = layers[layer].path.clone();
        warning.line = line;
        warning.key = own;
    }
    Ok(config)
}
