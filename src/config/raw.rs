//! Config text to the raw serde structs: every syntax error, every unknown key and every type
//! error, each with its dotted key (serde stops at the first error and names a span, not a key).

use super::{Problems, RawConfig};

/// The dotted key whose name or value covers byte `pos` of `text`, found through toml's
/// spanned document (serde errors carry a span, not a key).
fn key_at(text: &str, pos: usize) -> Option<Vec<String>> {
    fn walk(table: &toml::de::DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
        for (k, v) in table {
            if let toml::de::DeValue::Table(inner) = v.get_ref() {
                path.push(k.get_ref().to_string());
                if walk(inner, pos, path) {
                    return true;
                }
                path.pop();
            }
            // Arrays of tables (`[[dkim]]`): the element is named `dkim[N]`.
            if let toml::de::DeValue::Array(items) = v.get_ref() {
                for (i, item) in items.iter().enumerate() {
                    if let toml::de::DeValue::Table(inner) = item.get_ref() {
                        path.push(format!("{}[{i}]", k.get_ref()));
                        if walk(inner, pos, path) {
                            return true;
                        }
                        path.pop();
                    }
                }
            }
            if k.span().contains(&pos) || v.span().contains(&pos) {
                path.push(k.get_ref().to_string());
                return true;
            }
        }
        false
    }
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    walk(doc.get_ref(), pos, &mut path).then_some(path)
}

/// Line and column (1-based) of byte `pos`, for syntax errors without a key.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// serde's messages, in the vocabulary of a config file.
fn serde_message(message: &str) -> String {
    let message = message.trim();
    if message.starts_with("unknown field") {
        "unknown key".to_string()
    } else {
        message.to_string()
    }
}

fn remove_key(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => {
            // `name[N]`: element N of an array of tables.
            let element = first
                .strip_suffix(']')
                .and_then(|f| f.split_once('['))
                .and_then(|(name, i)| Some((name, i.parse::<usize>().ok()?)));
            let inner = match element {
                Some((name, i)) => match table.get_mut(name) {
                    Some(toml::Value::Array(items)) => items.get_mut(i),
                    _ => None,
                },
                None => table.get_mut(first),
            };
            match inner {
                Some(toml::Value::Table(inner)) => remove_key(inner, rest),
                _ => false,
            }
        }
    }
}

/// Parse `text` into the raw structs. Returns the raw config (when the syntax is valid) and the
/// dotted keys that had a type error or were unknown, so that validation does not report them
/// a second time as missing.
pub(super) fn parse(text: &str, problems: &mut Problems<'_>) -> Option<(RawConfig, Vec<String>)> {
    let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let pos = e.span().map_or(0, |s| s.start);
            let (line, col) = line_col(text, pos);
            let key = key_at(text, pos).map_or_else(|| "-".to_string(), |p| p.join("."));
            problems.push(
                key,
                format!(
                    "TOML syntax error at line {line}, column {col}: {}",
                    e.message().trim()
                ),
            );
        }
        return None;
    }
    // serde stops at the first error: record it, drop the offending key and try again, so that
    // every unknown key and every mistyped value is reported in one run.
    let mut doc: toml::Table = toml::from_str(text).ok()?;
    let mut current = text.to_string();
    let mut bad = Vec::new();
    loop {
        let err = match toml::from_str::<RawConfig>(&current) {
            Ok(raw) => return Some((raw, bad)),
            Err(e) => e,
        };
        let path = err.span().and_then(|s| key_at(&current, s.start));
        let message = serde_message(err.message());
        match path {
            Some(path) if remove_key(&mut doc, &path) => {
                let key = path.join(".");
                let message = if message.starts_with("invalid type: map, expected a sequence") {
                    format!("must be an array of tables: write [[{key}]], one per entry")
                } else {
                    message
                };
                problems.push(key.clone(), message);
                bad.push(key);
                current = toml::to_string(&doc).ok()?;
            }
            other => {
                problems.push(
                    other.map_or_else(|| "-".to_string(), |p| p.join(".")),
                    message,
                );
                return None;
            }
        }
    }
}
