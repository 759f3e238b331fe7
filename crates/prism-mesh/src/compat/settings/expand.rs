//! `${VAR}`, `${VAR:-default}` and `$$` in the file's values, expanded on the value tree
//! before it is read, so an expanded value is never parsed as YAML again.

use serde_yaml_ng::Value;

use super::{config_error, key_name, show_path};
use crate::error::Result;

pub(super) fn expand_tree(
    value: &mut Value,
    path: &mut Vec<String>,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                *s = expand_str(s, env).map_err(|message| {
                    config_error(format!("{origin}: {}: {message}", show_path(path)))
                })?;
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_tree(item, path, origin, env)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key_name(key));
                expand_tree(item, path, origin, env)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, origin, env)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in `text`. The error never quotes `text`
/// (it may hold a secret).
pub(super) fn expand_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or("unterminated `${` (expected `${NAME}` or `${NAME:-default}`)")?;
            let inner = &body[..end];
            let (name, default) = match inner.find(":-") {
                Some(at) => (&inner[..at], Some(&inner[at + 2..])),
                None => (inner, None),
            };
            if name.is_empty()
                || name.starts_with(|c: char| c.is_ascii_digit())
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!(
                    "invalid variable reference `${{{}}}`: names are ASCII letters, digits and '_'",
                    if name.chars().all(|c| c.is_ascii_graphic()) && name.len() <= 64 {
                        name
                    } else {
                        "..."
                    }
                ));
            }
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The raw shape of the section (structure only; values are checked by the loader).
