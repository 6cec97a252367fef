//! A content-addressed cache of completions: the key is the SHA-256 of the request
//! body in canonical form (object keys sorted), so the same model, messages,
//! parameters and seed find the same reply; a re-run sends nothing and costs $0.
//! Entries are written atomically the moment a reply arrives, so a killed run loses
//! nothing it already received. The API key travels in a header and is never part of
//! a request body, hence never of a cache file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Result;
use crate::client::Completion;
use crate::error::{file_error, write_atomic};

/// One cached exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The cache key.
    pub key: String,
    /// The request body.
    pub request: Value,
    /// The reply.
    pub completion: Completion,
    /// What the request was charged when it was made (USD).
    pub cost_usd: f64,
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The entry for `key`, if cached. An unreadable entry is an error naming the file
    /// (it is never silently fetched again: that would cost money).
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        let path = self.path(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(&path, e)),
        };
        let entry: Entry = serde_json::from_str(&text).map_err(|e| {
            file_error(
                &path,
                format!("not a cache entry ({e}); delete it to fetch this request again"),
            )
        })?;
        if entry.key != key {
            return Err(file_error(
                &path,
                format!("holds key {} instead of {key}; delete it", entry.key),
            ));
        }
        Ok(Some(entry))
    }

    /// Stores an entry atomically.
    pub fn put(&self, entry: &Entry) -> Result<()> {
        let path = self.path(&entry.key);
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| file_error(&path, e))?;
        write_atomic(&path, &bytes)
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        shards
            .flatten()
            .filter_map(|s| std::fs::read_dir(s.path()).ok())
            .flat_map(|files| files.flatten())
            .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
            .count()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache key of a request body: SHA-256 (hex) of its canonical JSON.
pub fn key(request: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(request, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_ignores_key_order_but_not_content() {
        let a = json!({"model": "m", "seed": 1, "messages": [{"role": "user", "content": "x"}]});
        let b = json!({"seed": 1, "messages": [{"content": "x", "role": "user"}], "model": "m"});
        let c = json!({"seed": 2, "messages": [{"content": "x", "role": "user"}], "model": "m"});
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert_eq!(key(&a).len(), 64);
    }

    #[test]
    fn round_trip_and_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let request = json!({"model": "m"});
        let k = key(&request);
        assert!(cache.get(&k).unwrap().is_none());
        let entry = Entry {
            key: k.clone(),
            request,
            completion: Completion {
                id: "gen-1".into(),
                model: "m".into(),
                content: "{}".into(),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(3),
                completion_tokens: Some(1),
                cost_usd: Some(0.5),
            },
            cost_usd: 0.5,
        };
        cache.put(&entry).unwrap();
        assert_eq!(cache.get(&k).unwrap(), Some(entry));
        assert_eq!(cache.len(), 1);
        std::fs::write(cache.path(&k), "{\"key\":").unwrap();
        let error = cache.get(&k).unwrap_err().to_string();
        assert!(
            error.contains(&k) && error.contains("not a cache entry"),
            "{error}"
        );
    }
}
