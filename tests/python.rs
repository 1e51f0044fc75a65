//! The Python package `outpost_batch` (cloud/python) against the Rust decoder: the venv
//! `cloud/python/build.sh` makes (scripts/test.sh runs it) decodes batches with
//! `cloud/python/tests/dump.py`, and every answer must equal the Rust decoder's exactly.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use outpost_batch::{Dictionaries, Value};

use crate::workspace_dir;

/// The venv's python with `outpost_batch` installed.
pub fn python() -> Result<PathBuf> {
    let python = workspace_dir().join("target/py/bin/python");
    ensure!(
        python.is_file(),
        "{} missing: run cloud/python/build.sh (scripts/test.sh does)",
        python.display()
    );
    Ok(python)
}

/// Decodes every batch with the Python package and checks each answer against the Rust
/// decoder's: header, rows (floats bit for bit), JSON lines, the pyarrow table, or the error.
pub fn assert_python_decodes_like_rust(batches: &[Vec<u8>]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for (i, bytes) in batches.iter().enumerate() {
        let path = dir.path().join(format!("{i:05}.batch"));
        std::fs::write(&path, bytes)?;
        paths.push(path);
    }
    let out = Command::new(python()?)
        .arg(workspace_dir().join("cloud/python/tests/dump.py"))
        .args(&paths)
        .output()
        .context("running the venv's python")?;
    ensure!(
        out.status.success(),
        "dump.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(answers.len() == batches.len(), "{} answers", answers.len());
    for (i, (bytes, py)) in batches.iter().zip(&answers).enumerate() {
        assert_same(bytes, py).with_context(|| format!("batch {i}"))?;
    }
    Ok(())
}

fn assert_same(bytes: &[u8], py: &serde_json::Value) -> Result<()> {
    let batch = match outpost_batch::decode(bytes, &Dictionaries::new()) {
        Ok(batch) => batch,
        Err(e) => {
            ensure!(
                py["error"] == e.to_string() && py["value_error"] == true,
                "Rust says {e}, Python {py}"
            );
            return Ok(());
        }
    };
    let h = batch.header();
    let ph = &py["header"];
    ensure!(
        ph["gateway_id"] == h.gateway_id.as_str()
            && ph["seq"] == h.seq
            && ph["first_ts_ms"] == h.first_ts_ms
            && ph["last_ts_ms"] == h.last_ts_ms
            && ph["reading_count"] == h.reading_count
            && ph["unsynchronised"] == h.unsynchronised
            && ph["dictionary_id"] == serde_json::json!(h.dictionary_id.map(|d| d.get()))
            && py["len"] == h.reading_count,
        "header: Rust {h:?}, Python {ph}"
    );
    ensure!(
        py["json_lines"] == batch.to_json_lines(),
        "JSON lines differ"
    );
    let rows = py["rows"].as_array().context("rows")?;
    let arrow = &py["arrow"];
    ensure!(
        rows.len() == h.reading_count as usize,
        "{} rows",
        rows.len()
    );
    for (k, (r, row)) in batch.readings().zip(rows).enumerate() {
        let (bits, raw, exp) = match r.value {
            Value::Decimal { raw, exp } => {
                (r.value.as_f64().to_bits() as i64, Some(raw), Some(exp))
            }
            Value::Float(v) => (v.to_bits() as i64, None, None),
        };
        let expected = serde_json::json!([r.source, r.channel, r.ts_ms, bits, raw, exp]);
        ensure!(*row == expected, "row {k}: Rust {expected}, Python {row}");
        let columns = [
            ("source", serde_json::json!(r.source)),
            ("channel", serde_json::json!(r.channel)),
            ("ts_ms", serde_json::json!(r.ts_ms)),
            ("value", serde_json::json!(bits)),
            ("raw", serde_json::json!(raw)),
            ("exp", serde_json::json!(exp)),
        ];
        for (name, want) in columns {
            ensure!(
                arrow[name][k] == want,
                "arrow {name}[{k}]: Rust {want}, Python {}",
                arrow[name][k]
            );
        }
    }
    ensure!(
        arrow["types"]
            == serde_json::json!([
                "dictionary<values=string, indices=int32, ordered=0>",
                "dictionary<values=string, indices=int32, ordered=0>",
                "timestamp[ms, tz=UTC]",
                "double",
                "int64",
                "int8"
            ]),
        "arrow types {}",
        arrow["types"]
    );
    Ok(())
}
