//! A lint of the router's own: unknown keywords in route schemas, as Ajv's strict mode flags them.
//!
//! `jsonschema` accepts unknown keywords, as the specification says, so `"minLenght"`
//! would silently drop a constraint. Keywords starting with `x-` are the schema's own
//! annotations and are allowed.

use serde_json::Value;

/// Every keyword of JSON Schema 2020-12 (and the draft-07 ones still in use).
const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$comment",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$vocabulary",
    "$recursiveRef",
    "$recursiveAnchor",
    "definitions",
    "type",
    "enum",
    "const",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxContains",
    "minContains",
    "maxProperties",
    "minProperties",
    "required",
    "dependentRequired",
    "dependencies",
    "properties",
    "patternProperties",
    "additionalProperties",
    "propertyNames",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "unevaluatedItems",
    "unevaluatedProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "title",
    "description",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "examples",
    "format",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
];

/// Keywords whose value is a map of schemas.
const SCHEMA_MAPS: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
/// Keywords whose value is one schema.
const SCHEMA_ONE: &[&str] = &[
    "additionalProperties",
    "propertyNames",
    "items",
    "additionalItems",
    "contains",
    "unevaluatedItems",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems", "items"];

/// An unknown keyword: where it is (a JSON pointer to its schema) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub pointer: String,
    pub keyword: String,
}

/// The unknown keywords of `schema`, in document order.
pub fn unknown_keywords(schema: &Value) -> Vec<Unknown> {
    let mut out = Vec::new();
    walk(schema, String::new(), &mut out);
    out
}

fn walk(schema: &Value, at: String, out: &mut Vec<Unknown>) {
    let Value::Object(obj) = schema else { return };
    for (k, v) in obj {
        if !KNOWN.contains(&k.as_str()) && !k.starts_with("x-") {
            out.push(Unknown {
                pointer: if at.is_empty() {
                    "/".to_owned()
                } else {
                    at.clone()
                },
                keyword: k.clone(),
            });
            continue;
        }
        let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
        if SCHEMA_MAPS.contains(&k.as_str())
            && let Value::Object(m) = v
        {
            for (name, sub) in m {
                walk(
                    sub,
                    format!("{here}/{}", name.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        if SCHEMA_ONE.contains(&k.as_str()) && v.is_object() {
            walk(v, here.clone(), out);
        }
        if SCHEMA_LISTS.contains(&k.as_str())
            && let Value::Array(items) = v
        {
            for (i, sub) in items.iter().enumerate() {
                walk(sub, format!("{here}/{i}"), out);
            }
        }
    }
}

/// A close known keyword, for "did you mean".
pub fn suggestion(unknown: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .copied()
        .map(|k| {
            (
                distance(&k.to_ascii_lowercase(), &unknown.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (short strings only).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_misspelled_keywords_where_they_are() {
        let s = json!({"type": "object", "x-contract-stateful": true,
                       "properties": {"name": {"type": "string", "minLenght": 1}},
                       "oneOf": [{"requird": ["a"]}], "examples": [{"minLenght": 3}]});
        let found = unknown_keywords(&s);
        assert_eq!(
            found,
            vec![
                Unknown {
                    pointer: "/oneOf/0".into(),
                    keyword: "requird".into()
                },
                Unknown {
                    pointer: "/properties/name".into(),
                    keyword: "minLenght".into()
                },
            ]
        );
        assert_eq!(suggestion("minLenght"), Some("minLength"));
        assert_eq!(suggestion("zzzzzz"), None);
    }
}
