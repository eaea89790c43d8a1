//! Values generated from JSON Schemas (proptest strategies): mostly valid, often at the
//! edges the schema draws (lengths, ranges, items, required and unknown properties), and
//! now and then just past them, with characters chosen where rules differ (control
//! characters, white space, characters past the ASCII range). Whether a value is valid is
//! never decided here: the test asks the schema, through a JSON Schema validator.
//!
//! It must never depend on the service: only on the schema it is given.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::spec::Spec;

/// `schema` with every `$ref` replaced by what it points to.
pub(crate) fn inline(spec: &Spec, schema: &Value) -> Value {
    match spec.resolve(schema) {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), inline(spec, value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| inline(spec, v)).collect()),
        other => other.clone(),
    }
}

/// How far values stray: within what the schema draws (lengths, ranges, kinds, required
/// properties; characters are still chosen freely), or past it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Within,
    Past,
}

/// Values of either mode, mostly within.
pub(crate) fn mixed(schema: &Value) -> BoxedStrategy<Value> {
    prop_oneof![3 => value(schema, Mode::Within), 2 => value(schema, Mode::Past)].boxed()
}

/// Characters where the rules of texts differ, and ordinary ones.
/// Within: no control characters, which most texts refuse.
fn character(mode: Mode) -> BoxedStrategy<char> {
    const EDGES: &[char] = &[
        '\0', '\t', '\n', '\r', '\u{b}', '\u{1f}', ' ', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
        '\u{1680}', '\u{2000}', '\u{200b}', '\u{2028}', '\u{3000}', '\u{feff}', 'é', '😀',
    ];
    match mode {
        Mode::Within => prop_oneof![
            30 => prop::char::range('a', 'z'),
            3 => Just(' '),
            1 => prop::sample::select(EDGES).prop_filter("no control", |c| !c.is_control()),
            1 => any::<char>().prop_filter("no control", |c| !c.is_control()),
        ]
        .boxed(),
        Mode::Past => prop_oneof![
            16 => prop::char::range('a', 'z'),
            3 => Just(' '),
            2 => prop::sample::select(EDGES),
            1 => any::<char>(),
        ]
        .boxed(),
    }
}

/// A string of `len` characters; past the schema, sometimes blank.
fn text(len: usize, mode: Mode) -> BoxedStrategy<String> {
    let chars = prop::collection::vec(character(mode), len).prop_map(|c| c.into_iter().collect());
    match mode {
        Mode::Within => chars.boxed(),
        Mode::Past => prop_oneof![8 => chars, 1 => Just(" ".repeat(len))].boxed(),
    }
}

/// A length to try for a string or an array: an edge of the schema's range, or inside it.
fn length(min: usize, max: Option<usize>, mode: Mode) -> BoxedStrategy<usize> {
    let max = max.unwrap_or(min + 12);
    let inside = min..=max.min(min + 12);
    if mode == Mode::Within {
        return prop_oneof![6 => inside, 1 => Just(min), 1 => Just(max)].boxed();
    }
    prop_oneof![
        6 => inside,
        1 => Just(min),
        1 => Just(min.saturating_sub(1)),
        1 => Just(max),
        1 => Just(max + 1),
    ]
    .boxed()
}

fn usize_of(schema: &Value, key: &str) -> Option<usize> {
    schema.get(key).and_then(Value::as_u64).map(|n| n as usize)
}

/// A value for `schema` (inlined), for a request: read-only properties are rarely sent.
pub(crate) fn value(schema: &Value, mode: Mode) -> BoxedStrategy<Value> {
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        // The branch that lists properties says what to send; the others only narrow it.
        let main = all
            .iter()
            .find(|s| s.get("properties").is_some())
            .or_else(|| all.first());
        return value(main.unwrap_or(&Value::Null), mode);
    }
    if let Some(any) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        let branches: Vec<BoxedStrategy<Value>> = any.iter().map(|s| value(s, mode)).collect();
        return prop::sample::select((0..branches.len()).collect::<Vec<_>>())
            .prop_flat_map(move |i| branches[i].clone())
            .boxed();
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return prop::sample::select(values.clone()).boxed();
    }
    let kind = match &schema["type"] {
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null")
            .to_owned(),
        _ => "any".to_owned(),
    };
    match kind.as_str() {
        "string" => string(schema, mode),
        "integer" => integer(schema, mode),
        "number" => number(schema, mode),
        "boolean" => any::<bool>().prop_map(Value::from).boxed(),
        "array" => array(schema, mode),
        "object" => object(schema, mode),
        "null" => Just(Value::Null).boxed(),
        _ => any_json(),
    }
}

fn string(schema: &Value, mode: Mode) -> BoxedStrategy<Value> {
    let min = usize_of(schema, "minLength").unwrap_or(0);
    let max = usize_of(schema, "maxLength");
    length(min, max, mode)
        .prop_flat_map(move |len| text(len, mode))
        .prop_map(Value::String)
        .boxed()
}

fn integer(schema: &Value, mode: Mode) -> BoxedStrategy<Value> {
    let min = schema["minimum"].as_f64().map_or(-1000, |m| m as i64);
    // Without a maximum (ids), mostly near the minimum, where things exist.
    let max = schema["maximum"].as_f64().map_or(min + 80, |m| m as i64);
    let inside = min..=max;
    if mode == Mode::Within {
        return prop_oneof![
            6 => inside.clone().prop_map(Value::from),
            1 => Just(Value::from(min)),
            1 => Just(Value::from(max)),
            1 => inside.prop_map(|n| json!(n as f64)),
        ]
        .boxed();
    }
    prop_oneof![
        6 => inside.clone().prop_map(Value::from),
        1 => Just(Value::from(min)),
        1 => Just(Value::from(min - 1)),
        1 => Just(Value::from(max)),
        1 => Just(Value::from(max.saturating_add(1))),
        1 => inside.prop_map(|n| json!(n as f64)),
        1 => Just(json!(1.5)),
        1 => Just(json!(1e300)),
    ]
    .boxed()
}

fn number(schema: &Value, mode: Mode) -> BoxedStrategy<Value> {
    let min = schema["minimum"].as_f64().unwrap_or(-1e6);
    let max = schema["maximum"].as_f64().unwrap_or(1e6);
    let cents = (min * 100.0) as i64..=(max * 100.0) as i64;
    if mode == Mode::Within {
        return prop_oneof![
            6 => cents.prop_map(|c| json!(c as f64 / 100.0)),
            1 => Just(json!(min)),
            1 => Just(json!(max)),
        ]
        .boxed();
    }
    prop_oneof![
        6 => cents.clone().prop_map(|c| json!(c as f64 / 100.0)),
        1 => cents.clone().prop_map(|c| json!(c as f64 / 100.0 + 0.005)),
        1 => cents.prop_map(|c| json!(c as f64 / 100.0 + 1e-9)),
        1 => Just(json!(min)),
        1 => Just(json!(min - 0.01)),
        1 => Just(json!(max)),
        1 => Just(json!(max + 0.01)),
        1 => Just(json!(max as i64)),
    ]
    .boxed()
}

fn array(schema: &Value, mode: Mode) -> BoxedStrategy<Value> {
    let min = usize_of(schema, "minItems").unwrap_or(0);
    let max = usize_of(schema, "maxItems");
    let items = value(&schema["items"], mode);
    length(min, max, mode)
        .prop_flat_map(move |len| prop::collection::vec(items.clone(), len))
        .prop_map(Value::Array)
        .boxed()
}

/// An object: required properties nearly always, optional ones half the time, read-only
/// ones rarely; now and then a property of the wrong kind, `null`, or an unknown one.
fn object(schema: &Value, mode: Mode) -> BoxedStrategy<Value> {
    let required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let weight = if required.contains(name) && mode == Mode::Within {
            (0, 1)
        } else if required.contains(name) {
            (1, 15)
        } else if property["readOnly"] == true {
            (9, 1)
        } else {
            (1, 1)
        };
        let name = name.clone();
        let present = match mode {
            Mode::Within => value(property, mode),
            Mode::Past => prop_oneof![8 => value(property, mode), 1 => any_json()].boxed(),
        }
        .prop_map(move |v| Some((name.clone(), v)));
        fields.push(match weight {
            (0, _) => present.boxed(),
            (absent, present_weight) => {
                prop_oneof![absent => Just(None), present_weight => present].boxed()
            }
        });
    }
    let unknown = match mode {
        Mode::Within => Just(None).boxed(),
        Mode::Past => prop_oneof![
            12 => Just(None),
            1 => any_json().prop_map(|v| Some(("colour".to_owned(), v))),
        ]
        .boxed(),
    };
    (fields, unknown)
        .prop_map(|(fields, unknown)| {
            let map: Map<String, Value> = fields.into_iter().chain([unknown]).flatten().collect();
            Value::Object(map)
        })
        .boxed()
}

/// A small JSON value of any kind.
fn any_json() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "[a-z ]{0,8}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
    .boxed()
}
