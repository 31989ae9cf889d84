//! Where an export may be written: inside the configured output location, and nowhere else
//! (R9: no destination exists for sending data to a third party).

use std::path::{Component, Path, PathBuf};

use crate::error::ExportError;

/// Resolves `out` (relative to the working folder, or absolute) and accepts it only if it lies
/// strictly inside `root`, after following symbolic links, names no `..`, and is a new or empty
/// folder. Creates it and returns its resolved path.
pub fn confine(root: &Path, out: &Path) -> Result<PathBuf, ExportError> {
    let refuse = |why: &str| ExportError::Destination {
        destination: out.to_owned(),
        root: root.to_owned(),
        why: why.to_owned(),
    };
    if out.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse("it contains `..`"));
    }
    // No file system takes a NUL byte in a name, and no export needs a control character.
    if out
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(u8::is_ascii_control)
    {
        return Err(refuse("it holds a NUL byte or another control character"));
    }
    std::fs::create_dir_all(root).map_err(|e| ExportError::io(root, e))?;
    let resolved_root = root.canonicalize().map_err(|e| ExportError::io(root, e))?;
    let absolute = if out.is_absolute() {
        out.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| ExportError::io(Path::new("."), e))?
            .join(out)
    };
    // Follow links through the part that exists; the rest will be made as plain folders.
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    // `symlink_metadata`: a link that leads nowhere still exists, and is resolved (and refused)
    // below rather than written through.
    while existing.symlink_metadata().is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            return Err(refuse("no part of it exists"));
        };
        missing.push(name.to_owned());
        existing = parent;
    }
    let mut resolved = existing
        .canonicalize()
        .map_err(|_| refuse("it passes through a link that leads nowhere"))?;
    resolved.extend(missing.iter().rev());
    if resolved == resolved_root || !resolved.starts_with(&resolved_root) {
        return Err(refuse("it is not inside the export root"));
    }
    if resolved.is_dir()
        && std::fs::read_dir(&resolved)
            .map_err(|e| ExportError::io(&resolved, e))?
            .next()
            .is_some()
    {
        return Err(refuse("it is not empty; an export never overwrites files"));
    }
    std::fs::create_dir_all(&resolved).map_err(|e| ExportError::io(&resolved, e))?;
    Ok(resolved)
}
