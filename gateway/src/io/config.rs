//! Reading the configuration: `/etc/outpost/outpost.toml`, its drop-ins `outpost.d/*.toml` (in
//! name order) and the files it names (Modbus maps, a token file). The compiling itself, with
//! every problem located by file, line and key, is `outpost_core::config`'s; this adapter only
//! reads files and answers its [`Environment`] from this machine (for a secret file: its mode,
//! owner and group, which the core judges).

use std::path::{Path, PathBuf};

use outpost_core::config::dropin::{self, Layer};
use outpost_core::config::{Config, ConfigError, ConfigErrors, Environment, FileAccess, Principal};

/// The configuration read when none is given.
pub const DEFAULT_PATH: &str = "/etc/outpost/outpost.toml";

/// This machine, as the configuration sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisMachine;

impl Environment for ThisMachine {
    fn read_file(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }

    fn is_readable_file(&self, path: &Path) -> bool {
        std::fs::File::open(path)
            .and_then(|f| f.metadata())
            .is_ok_and(|m| m.is_file())
    }

    fn is_non_directory(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| !m.is_dir())
    }

    fn host_name(&self) -> Option<String> {
        nix::unistd::gethostname().ok()?.into_string().ok()
    }

    fn check_log_filter(&self, filter: &str) -> Result<(), String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(filter)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn file_access(&self, path: &Path) -> Result<FileAccess, String> {
        use std::os::unix::fs::MetadataExt as _;
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let owner = nix::unistd::Uid::from_raw(meta.uid());
        let group = nix::unistd::Gid::from_raw(meta.gid());
        Ok(FileAccess {
            mode: meta.mode() & 0o7777,
            owner: Principal {
                id: meta.uid(),
                name: nix::unistd::User::from_uid(owner)
                    .ok()
                    .flatten()
                    .map(|u| u.name),
                is_self: owner == nix::unistd::geteuid(),
            },
            group: Principal {
                id: meta.gid(),
                name: nix::unistd::Group::from_gid(group)
                    .ok()
                    .flatten()
                    .map(|g| g.name),
                is_self: group == nix::unistd::getegid(),
            },
        })
    }
}

/// The files the configuration was last loaded from, main file first: what the diagnostics
/// bundle shows (redacted) of this daemon's configuration.
static LOADED_FROM: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The main file and the drop-ins of the last [`load`], in the order they were read.
#[must_use]
pub fn loaded_files() -> Vec<std::path::PathBuf> {
    LOADED_FROM
        .lock()
        .map(|files| files.clone())
        .unwrap_or_default()
}

/// Reads, parses and validates a config file and its drop-ins (`outpost.d/*.toml` beside it).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read(path)?;
    let dropins = dropin_files(&dropin_dir(path))?;
    if let Ok(mut files) = LOADED_FROM.lock() {
        *files = std::iter::once(path.to_owned())
            .chain(dropins.iter().cloned())
            .collect();
    }
    if dropins.is_empty() {
        return Config::parse(path, &text, &ThisMachine);
    }
    let mut layers = vec![Layer {
        path: path.to_owned(),
        text,
    }];
    let mut errors = Vec::new();
    for file in dropins {
        match read(&file) {
            Ok(text) => layers.push(Layer { path: file, text }),
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    dropin::parse_layers(
        &layers,
        path.parent().unwrap_or(Path::new(".")),
        &ThisMachine,
    )
}

/// A config file's text, an unreadable one being a located error like any other.
fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![ConfigError::unreadable(path, e)]))
}

/// The drop-in folder of a main config file.
#[must_use]
pub fn dropin_dir(main: &Path) -> PathBuf {
    main.parent().unwrap_or(Path::new(".")).join("outpost.d")
}

/// The drop-ins of `dir` in the order they apply (by name); none when it does not exist.
pub fn dropin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                file: dir.to_owned(),
                line: None,
                key: String::new(),
                message: format!("cannot read the drop-in folder: {e}"),
            }]));
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_config_in_the_repository_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked >= 1, "no example config found in {}", dir.display());
    }

    /// A main file and drop-ins in a temporary /etc/outpost.
    fn layered(
        main: &str,
        dropins: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Config, ConfigErrors>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("outpost.toml"), main).unwrap();
        std::fs::create_dir(dir.path().join("outpost.d")).unwrap();
        for (name, text) in dropins {
            std::fs::write(dir.path().join("outpost.d").join(name), text).unwrap();
        }
        let config = load(&dir.path().join("outpost.toml"));
        (dir, config)
    }

    #[test]
    fn drop_ins_are_read_in_name_order_and_other_files_are_left_alone() {
        let (_dir, config) = layered(
            "[api]\nlisten = \"127.0.0.1:8080\"\n",
            &[
                ("20-late.toml", "[api]\nlisten = \"127.0.0.1:9090\"\n"),
                ("10-early.toml", "[api]\nlisten = \"127.0.0.1:7070\"\n"),
                ("README", "not toml, not read"),
            ],
        );
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.api_listen.port(), 9090, "the later drop-in wins");
    }

    #[test]
    fn a_map_next_to_the_config_is_read_relative_to_its_folder_and_a_broken_one_located() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            "[[point]]\nname = \"x\"\ntable = \"input\"\naddress = 70000\ntype = \"u16\"\n",
        )
        .unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(
            &path,
            "[[modbus.device]]\nname = \"m\"\nmap = \"bad.toml\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\n",
        )
        .unwrap();
        let errors = load(&path).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.key.as_str(), e.line), ("modbus.device[0].map", Some(3)));
        assert!(e.message.contains("bad.toml:4"), "{e}");
    }

    #[test]
    fn a_data_dir_that_is_a_regular_file_is_a_located_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(
            &path,
            format!("[gateway]\ndata_dir = \"{}\"\n", file.display()),
        )
        .unwrap();
        let e = &load(&path).unwrap_err().0[0];
        assert_eq!(
            (e.key.as_str(), e.line),
            ("gateway.data_dir", Some(2)),
            "{e}"
        );
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let e = load(Path::new("/nonexistent/outpost.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/outpost.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn the_log_filter_syntax_is_tracing_s() {
        assert!(ThisMachine.check_log_filter("info,outpost=debug").is_ok());
        assert!(ThisMachine.check_log_filter("info=[").is_err());
    }
}
