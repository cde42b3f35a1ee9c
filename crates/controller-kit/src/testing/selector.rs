//! Label and field selectors, as far as the fake API server understands them.

use serde_json::Value;

use super::store::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    Exists,
    NotExists,
}

#[derive(Clone, Debug)]
struct Requirement {
    key: String,
    op: Op,
}

/// The `labelSelector` and `fieldSelector` of a list or watch; empty selects everything.
#[derive(Clone, Debug, Default)]
pub(super) struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Selector {
    /// Parses equality-based label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`) and field
    /// selectors (`path=v`, `path==v`, `path!=v`), comma-separated. Set-based label selectors
    /// (`k in (a,b)`) are refused with 400.
    pub(super) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut selector = Self::default();
        for term in labels.unwrap_or_default().split(',').map(str::trim) {
            if term.is_empty() {
                continue;
            }
            if term.contains(['(', ' ']) {
                return Err(ApiError::bad_request(format!(
                    "unsupported label selector {term:?}: the fake API server only understands \
                     k=v, k!=v, k and !k"
                )));
            }
            selector.labels.push(match term.strip_prefix('!') {
                Some(key) => Requirement {
                    key: key.to_owned(),
                    op: Op::NotExists,
                },
                None => equality(term).unwrap_or(Requirement {
                    key: term.to_owned(),
                    op: Op::Exists,
                }),
            });
        }
        for term in fields.unwrap_or_default().split(',').map(str::trim) {
            if term.is_empty() {
                continue;
            }
            selector.fields.push(equality(term).ok_or_else(|| {
                ApiError::bad_request(format!("invalid field selector {term:?}"))
            })?);
        }
        Ok(selector)
    }

    /// Whether `obj` matches every requirement.
    pub(super) fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let labels_match = self.labels.iter().all(|r| {
            let value = labels.get(&r.key).and_then(Value::as_str);
            match &r.op {
                Op::Equals(v) => value == Some(v.as_str()),
                Op::NotEquals(v) => value != Some(v.as_str()),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        });
        labels_match
            && self.fields.iter().all(|r| {
                let value = field(obj, &r.key);
                match &r.op {
                    Op::Equals(v) => value == *v,
                    Op::NotEquals(v) => value != *v,
                    Op::Exists | Op::NotExists => false,
                }
            })
    }
}

fn equality(term: &str) -> Option<Requirement> {
    let (key, op) = if let Some((k, v)) = term.split_once("!=") {
        (k, Op::NotEquals(v.trim().to_owned()))
    } else if let Some((k, v)) = term.split_once("==") {
        (k, Op::Equals(v.trim().to_owned()))
    } else {
        let (k, v) = term.split_once('=')?;
        (k, Op::Equals(v.trim().to_owned()))
    };
    Some(Requirement {
        key: key.trim().to_owned(),
        op,
    })
}

/// The value at a dotted path (`metadata.name`, `status.phase`) as a string; `""` if absent.
fn field(obj: &Value, path: &str) -> String {
    let value = path.split('.').try_fold(obj, |v, part| v.get(part));
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}
