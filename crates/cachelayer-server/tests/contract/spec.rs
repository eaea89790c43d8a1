//! The service's OpenAPI document as the contract test reads it: its operations, their
//! parameters and bodies, and the check of an answer against what the document declares
//! (status, required headers and their schemas, content type, body schema).
//!
//! It must never accept an answer the document does not declare: an undeclared status, a
//! missing required header, or a body its schema refuses is a failure.

use std::collections::BTreeMap;

use jsonschema::Validator;
use serde_json::{Value, json};

/// One operation of the document.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) id: String,
    pub(crate) doc: Value,
}

/// An answer as the check sees it.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: bytes::Bytes,
}

/// The document, with its schemas compiled on first use.
pub(crate) struct Spec {
    pub(crate) doc: Value,
}

impl Spec {
    pub(crate) fn new(doc: Value) -> Self {
        Self { doc }
    }

    /// Every operation, in document order.
    pub(crate) fn operations(&self) -> Vec<Operation> {
        let mut all = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, doc) in item.as_object().expect("path item") {
                all.push(Operation {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    id: doc["operationId"].as_str().unwrap_or_default().to_owned(),
                    doc: doc.clone(),
                });
            }
        }
        all
    }

    pub(crate) fn operation(&self, id: &str) -> Operation {
        self.operations()
            .into_iter()
            .find(|op| op.id == id)
            .unwrap_or_else(|| panic!("no operation {id}"))
    }

    /// `value`, or what its `$ref` points to (within this document).
    pub(crate) fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(pointer) => {
                let pointer = pointer.strip_prefix('#').expect("local reference");
                self.resolve(self.doc.pointer(pointer).expect("reference resolves"))
            }
            None => value,
        }
    }

    /// A validator of `schema`, its references resolved against this document.
    pub(crate) fn validator(&self, schema: &Value) -> Validator {
        let mut root = schema.clone();
        if let Value::Object(map) = &mut root {
            map.insert("components".to_owned(), self.doc["components"].clone());
        } else {
            root = json!({ "allOf": [schema], "components": self.doc["components"] });
        }
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|err| panic!("schema {schema} does not compile: {err}"))
    }

    /// Whether `value` is valid against `schema`.
    pub(crate) fn valid(&self, schema: &Value, value: &Value) -> bool {
        self.validator(schema).is_valid(value)
    }

    /// The request body schema of an operation, if it takes one.
    pub(crate) fn body_schema<'a>(&'a self, op: &'a Operation) -> Option<&'a Value> {
        let body = self.resolve(op.doc.get("requestBody")?);
        body.pointer("/content/application~1json/schema")
    }

    /// The parameters of an operation, resolved.
    pub(crate) fn parameters<'a>(&'a self, op: &'a Operation) -> Vec<&'a Value> {
        op.doc["parameters"]
            .as_array()
            .map(|all| all.iter().map(|p| self.resolve(p)).collect())
            .unwrap_or_default()
    }

    /// Why `answer` is not what `op` declares, if it is not.
    pub(crate) fn check(&self, op: &Operation, answer: &Answer) -> Result<(), String> {
        let responses = &op.doc["responses"];
        let declared = responses
            .get(answer.status.to_string())
            .or_else(|| responses.get("default"))
            .ok_or_else(|| format!("status {} is not declared", answer.status))?;
        let declared = self.resolve(declared);
        if op.method == "HEAD" {
            // The headers of the GET's answer, never a body.
            let mut headers_only = declared.clone();
            headers_only.as_object_mut().map(|o| o.remove("content"));
            return self.check_response(&headers_only, answer);
        }
        self.check_response(declared, answer)
    }

    /// Why `answer` is not the response object `declared`, if it is not.
    pub(crate) fn check_response(&self, declared: &Value, answer: &Answer) -> Result<(), String> {
        let empty = BTreeMap::new();
        let headers: BTreeMap<String, Value> = declared["headers"]
            .as_object()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or(empty);
        for (name, header) in &headers {
            let header = self.resolve(header);
            let value = answer.headers.get(name.as_str());
            match value {
                None if header["required"] == true => {
                    return Err(format!("required header {name} is missing"));
                }
                None => {}
                Some(value) => {
                    let text = value.to_str().map_err(|_| format!("{name} is not text"))?;
                    let schema = &header["schema"];
                    if schema.is_object() && !self.header_valid(schema, text) {
                        return Err(format!("header {name}: {text:?} is not valid"));
                    }
                }
            }
        }
        let content_type = answer
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some(content) = declared["content"].as_object() else {
            return match answer.body.is_empty() {
                true => Ok(()),
                false => Err("a body where none is declared".to_owned()),
            };
        };
        let media = content
            .iter()
            .find(|(media, _)| content_type.starts_with(media.as_str()))
            .ok_or_else(|| format!("content type {content_type:?} is not declared"))?;
        if media.0 == "application/json"
            && let Some(schema) = media.1.get("schema")
        {
            let body: Value = serde_json::from_slice(&answer.body)
                .map_err(|err| format!("the body is not JSON: {err}"))?;
            let validator = self.validator(schema);
            if let Some(error) = validator.iter_errors(&body).next() {
                return Err(format!(
                    "the body is not valid: {error} at {}",
                    error.instance_path()
                ));
            }
        }
        Ok(())
    }

    /// A header value against its schema: as a number where the schema says so.
    fn header_valid(&self, schema: &Value, text: &str) -> bool {
        let as_string = Value::String(text.to_owned());
        let as_number = text.parse::<i64>().map(Value::from).ok();
        self.valid(schema, &as_string)
            || as_number.is_some_and(|number| self.valid(schema, &number))
    }
}
