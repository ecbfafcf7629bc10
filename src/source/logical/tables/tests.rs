//! The table mapping: changes in, change events (or dead letters) out.

use super::*;
use crate::event::Position;
use crate::source::logical::event::pg_time;

/// `public.orders (id int4 primary key, note text, doc jsonb)` with the given identity.
fn orders(identity: ReplicaIdentity) -> Relation {
    let column = |name: &str, type_id, key| Column {
        key,
        name: name.into(),
        type_id,
        type_modifier: -1,
    };
    let full = identity == ReplicaIdentity::Full;
    Relation {
        id: 7,
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: identity,
        columns: vec![
            column("id", 23, true),
            column("note", 25, full),
            column("doc", 3802, full),
        ],
    }
}

/// A mapping of `public.*` that has seen `relation`, with `id` as the primary key.
fn mapping(relation: &Relation) -> TableMapping {
    let mut catalog = Catalog {
        db: "shop".into(),
        ..Catalog::default()
    };
    catalog
        .keys
        .insert(("public".into(), "orders".into()), vec!["id".into()]);
    let patterns = vec![TablePattern::parse("public.*").unwrap()];
    let mut mapping = TableMapping::new(patterns, vec![], catalog, 1 << 20);
    mapping.begin();
    mapping.relation(relation);
    mapping
}

fn at() -> At {
    At {
        lsn: 0x1_0000_0010,
        txn: Txn {
            position: Position(0x1_0000_0100),
            commit_time: pg_time(0),
            xid: 901,
        },
    }
}

fn event(decoded: &Decoded) -> (&Event, serde_json::Value) {
    let Decoded::Event(event) = decoded else {
        panic!("not an event: {decoded:?}");
    };
    (event, serde_json::from_str(event.payload.get()).unwrap())
}

#[test]
fn an_insert_is_a_create_keyed_by_the_primary_key_with_debeziums_envelope() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Default));
    let values = [Value::Text(b"42"), Value::Text(b"hi"), Value::Null];
    let decoded = mapping.insert(7, &values, at()).unwrap();
    let (event, payload) = event(&decoded);
    assert_eq!(event.key, r#"{"id":42}"#);
    assert_eq!(event.subject, "public.orders");
    assert_eq!(event.op, Operation::Insert);
    assert_eq!(event.id, "1/100:0");
    assert_eq!(event.headers.as_ref().unwrap().get(), r#"{"lsn":"1/10"}"#);
    assert_eq!(payload["before"], serde_json::Value::Null);
    assert_eq!(
        payload["after"],
        serde_json::json!({"id": 42, "note": "hi", "doc": null})
    );
    assert_eq!(payload["op"], "c");
    let source = &payload["source"];
    assert_eq!(
        (&source["db"], &source["table"]),
        (&"shop".into(), &"orders".into())
    );
    assert_eq!(
        (&source["lsn"], &source["txId"]),
        (&0x1_0000_0010u64.into(), &901.into())
    );
    assert_eq!(source["snapshot"], "false");
}

#[test]
fn changes_of_one_transaction_get_distinct_ids_that_a_replay_repeats() {
    let relation = orders(ReplicaIdentity::Default);
    let ids = || {
        let mut mapping = mapping(&relation);
        let values = [Value::Text(b"1"), Value::Null, Value::Null];
        let first = mapping.insert(7, &values, at()).unwrap();
        let second = mapping.update(7, None, &values, at()).remove(0);
        (event(&first).0.id.clone(), event(&second).0.id.clone())
    };
    let (a, b) = ids();
    assert_ne!(a, b);
    assert_eq!(ids(), (a, b));
}

#[test]
fn under_default_identity_a_delete_carries_the_old_key_and_an_update_no_before() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Default));
    let new = [Value::Text(b"42"), Value::Text(b"new"), Value::Null];
    let (_, update) = event(&mapping.update(7, None, &new, at())[0]);
    assert_eq!(update["op"], "u");
    assert_eq!(update["before"], serde_json::Value::Null);
    let old = OldRow::Key(vec![Value::Text(b"42"), Value::Null, Value::Null]);
    let decoded = mapping.delete(7, &old, at()).unwrap();
    let (deleted, delete) = event(&decoded);
    assert_eq!(deleted.key, r#"{"id":42}"#);
    assert_eq!(delete["before"], serde_json::json!({"id": 42}));
    assert_eq!(delete["after"], serde_json::Value::Null);
    assert_eq!(delete["op"], "d");
}

#[test]
fn under_full_identity_before_is_the_whole_old_row_and_unchanged_toast_comes_from_it() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Full));
    let old = OldRow::Row(vec![
        Value::Text(b"42"),
        Value::Text(b"old"),
        Value::Text(b"[1]"),
    ]);
    let new = [Value::Text(b"42"), Value::Text(b"new"), Value::Unchanged];
    let items = mapping.update(7, Some(&old), &new, at());
    let (event_, payload) = event(&items[0]);
    assert_eq!(
        event_.key, r#"{"id":42}"#,
        "the key is the primary key, not every column"
    );
    assert_eq!(
        payload["before"],
        serde_json::json!({"id": 42, "note": "old", "doc": [1]})
    );
    assert_eq!(
        payload["after"],
        serde_json::json!({"id": 42, "note": "new", "doc": [1]})
    );
    assert!(payload.get("unchanged_toast").is_none());
}

#[test]
fn without_full_identity_an_unchanged_toast_column_is_left_out_and_listed_not_null() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Default));
    let new = [Value::Text(b"42"), Value::Unchanged, Value::Null];
    let (_, payload) = event(&mapping.update(7, None, &new, at())[0]);
    assert_eq!(payload["after"], serde_json::json!({"id": 42, "doc": null}));
    assert_eq!(payload["unchanged_toast"], serde_json::json!(["note"]));
}

#[test]
fn an_update_of_the_key_is_a_delete_of_the_old_key_and_a_create_of_the_new() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Default));
    let old = OldRow::Key(vec![Value::Text(b"1"), Value::Null, Value::Null]);
    let new = [Value::Text(b"2"), Value::Text(b"x"), Value::Null];
    let items = mapping.update(7, Some(&old), &new, at());
    assert_eq!(items.len(), 2);
    let (deleted, delete) = event(&items[0]);
    let (created, create) = event(&items[1]);
    assert_eq!(
        (deleted.key.as_str(), delete["op"].as_str()),
        (r#"{"id":1}"#, Some("d"))
    );
    assert_eq!(
        (created.key.as_str(), create["op"].as_str()),
        (r#"{"id":2}"#, Some("c"))
    );
    assert_ne!(deleted.id, created.id);
}

#[test]
fn a_truncate_is_one_event_per_captured_table() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Default));
    let items = mapping.truncate(&[7, 99], at());
    assert_eq!(items.len(), 1);
    let (truncated, payload) = event(&items[0]);
    assert_eq!(
        (truncated.op, truncated.key.as_str()),
        (Operation::Truncate, "")
    );
    assert_eq!(payload["op"], "t");
}

#[test]
fn a_value_that_cannot_be_decoded_is_a_dead_letter_naming_table_key_and_column() {
    let mut mapping = mapping(&orders(ReplicaIdentity::Default));
    let values = [Value::Text(b"42"), Value::Null, Value::Text(b"{broken")];
    let Some(Decoded::Rejected(rejected)) = mapping.insert(7, &values, at()) else {
        panic!("expected a dead letter");
    };
    assert!(
        rejected
            .reason
            .starts_with(r#"table public.orders, key {"id":42}: column "doc""#),
        "{}",
        rejected.reason
    );
}

#[test]
fn a_new_relation_message_changes_how_later_rows_are_read() {
    let mut relation = orders(ReplicaIdentity::Default);
    let mut mapping = mapping(&relation);
    relation.columns[1].name = "remark".into();
    relation.columns[2].type_id = 25; // doc became text
    mapping.relation(&relation);
    let values = [Value::Text(b"1"), Value::Text(b"r"), Value::Text(b"{}")];
    let (_, payload) = event(&mapping.insert(7, &values, at()).unwrap());
    assert_eq!(
        payload["after"],
        serde_json::json!({"id": 1, "remark": "r", "doc": "{}"})
    );
}

#[test]
fn tables_that_are_not_captured_are_ignored() {
    let mut relation = orders(ReplicaIdentity::Default);
    relation.namespace = "other".into();
    let mut mapping = mapping(&relation);
    assert!(!mapping.captures(7));
    assert!(mapping.insert(7, &[Value::Text(b"1")], at()).is_none());
}
