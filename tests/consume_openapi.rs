//! `docs/openapi.yaml` describes what the server does: every documented operation is called
//! against the real relay binary, and every answer (successes and errors) and every request
//! body sent must fit the documented schema for its status. A renamed field, a changed type, an
//! undocumented status or an operation missing from the document fails this test.

mod common;

use common::consume::{TOKEN, call, consume_config, start_relay, wait_served};
use common::pg::test_db;
use common::relay::{create_aggregates, write_events};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use yaml_rust2::{Yaml, YamlLoader};

/// The document, as JSON.
fn document() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    to_json(&docs[0])
}

/// A YAML value as JSON.
fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(real) => json!(real.parse::<f64>().unwrap()),
        Yaml::Integer(int) => json!(int),
        Yaml::String(string) => json!(string),
        Yaml::Boolean(bool) => json!(bool),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(hash) => Value::Object(
            hash.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML {other:?}"),
    }
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local reference");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} missing")),
            )
        }
        None => node,
    }
}

/// The ways `value` breaks `schema`, each with its JSON path.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let fits = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("schema type {other} not handled"),
    };
    if !fits {
        errors.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let (Some(min), Some(number)) = (schema["minimum"].as_f64(), value.as_f64())
        && number < min
    {
        errors.push(format!("{at}: {number} is below {min}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            if !object.contains_key(required.as_str().unwrap()) {
                errors.push(format!("{at}: missing {required}"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, field) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => check(doc, sub, field, &format!("{at}.{key}"), errors),
                None if schema["additionalProperties"] == false => {
                    errors.push(format!("{at}: {key} is not documented"))
                }
                None => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            check(doc, &schema["items"], item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Calls `method path` with `body`, checks request and answer against the operation documented
/// under `template`, and returns the answer's JSON.
async fn exercise(
    doc: &Value,
    addr: std::net::SocketAddr,
    (method, template, path): (&str, &str, &str),
    token: Option<&str>,
    body: Option<Value>,
    expected: u16,
    covered: &mut BTreeSet<(String, String)>,
) -> Value {
    let operation = &doc["paths"][template][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not documented"
    );
    let mut errors = Vec::new();
    if let Some(body) = body.as_ref().filter(|_| expected == 200) {
        // Well-formed requests must fit the documented request body (bad ones are meant not to).
        let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        check(doc, schema, body, "request", &mut errors);
    }
    let answer = call(addr, method, path, token, body.as_ref()).await;
    assert_eq!(answer.status, expected, "{method} {path}: {}", answer.text);
    let response = resolve(doc, &operation["responses"][expected.to_string()]);
    assert!(
        response.is_object(),
        "{method} {template}: status {expected} is not documented"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {template} {expected}: no JSON schema documented"
    );
    check(doc, schema, &answer.json, "response", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} ({expected}) breaks docs/openapi.yaml:\n{}",
        errors.join("\n")
    );
    covered.insert((method.to_lowercase(), template.to_owned()));
    answer.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_consumer_api_fits_its_openapi_document() {
    let doc = document();
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = consume_config(&db, &log);
    config.http.consume.max_body_bytes = 1024;
    create_aggregates(&db, 3).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 1, 6, 3).await;
    wait_served(addr, 6).await;
    let covered = &mut BTreeSet::new();
    let t = Some(TOKEN);

    let records = "/v1/records";
    let page = exercise(
        &doc,
        addr,
        ("GET", records, "/v1/records?from=0&limit=3&wait_ms=10"),
        t,
        None,
        200,
        covered,
    )
    .await;
    assert_eq!(page["records"].as_array().unwrap().len(), 3);
    exercise(
        &doc,
        addr,
        ("GET", records, "/v1/records?limit=x"),
        t,
        None,
        400,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("GET", records, "/v1/records"),
        None,
        None,
        401,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("GET", "/v1/stream", "/v1/stream?from=x"),
        t,
        None,
        400,
        covered,
    )
    .await;

    let receive = "/v1/groups/{group}/receive";
    let got = exercise(
        &doc,
        addr,
        ("POST", receive, "/v1/groups/g/receive"),
        t,
        Some(json!({"max": 3, "wait_ms": 10, "visibility_ms": 60000, "topic": "order"})),
        200,
        covered,
    )
    .await;
    let ids: Vec<Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_id"].clone())
        .collect();
    assert_eq!(ids.len(), 3, "{got}");
    exercise(
        &doc,
        addr,
        ("POST", receive, "/v1/groups/g/receive"),
        t,
        Some(json!({"max": -1})),
        400,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("POST", receive, "/v1/groups/g/receive"),
        t,
        Some(json!({"topic": "x".repeat(2000)})),
        413,
        covered,
    )
    .await;
    let ack = "/v1/groups/{group}/ack";
    exercise(
        &doc,
        addr,
        ("POST", ack, "/v1/groups/g/ack"),
        t,
        Some(json!({"ack_ids": [ids[0]]})),
        200,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("POST", ack, "/v1/groups/none/ack"),
        t,
        Some(json!({"ack_ids": []})),
        404,
        covered,
    )
    .await;
    let nack = "/v1/groups/{group}/nack";
    exercise(
        &doc,
        addr,
        ("POST", nack, "/v1/groups/g/nack"),
        t,
        Some(json!({"ack_ids": [ids[1]], "delay_ms": 10})),
        200,
        covered,
    )
    .await;
    let group = "/v1/groups/{group}";
    let status = exercise(
        &doc,
        addr,
        ("GET", group, "/v1/groups/g"),
        t,
        None,
        200,
        covered,
    )
    .await;
    assert_eq!(status["topic"], "order", "{status}");
    exercise(
        &doc,
        addr,
        ("GET", group, "/v1/groups/none"),
        t,
        None,
        404,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("GET", "/v1/groups", "/v1/groups"),
        t,
        None,
        200,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("DELETE", group, "/v1/groups/g"),
        t,
        None,
        200,
        covered,
    )
    .await;
    exercise(
        &doc,
        addr,
        ("DELETE", group, "/v1/groups/g"),
        t,
        None,
        404,
        covered,
    )
    .await;

    // Every documented operation was called (the stream's 200 is an event stream, checked by
    // tests/consume_api.rs).
    covered.insert(("get".into(), "/v1/stream".into()));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    assert_eq!(&documented, covered);
}
