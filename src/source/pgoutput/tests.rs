//! One test per message kind, laid out the way the server writes it, and the malformed and
//! truncated forms of each.

use super::*;

/// Builds messages the way the server lays them out.
#[derive(Default, Clone)]
struct Wire(Vec<u8>);

impl Wire {
    fn tag(tag: u8) -> Self {
        Wire(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn cstr(mut self, v: &str) -> Self {
        self.0.extend(v.as_bytes());
        self.0.push(0);
        self
    }
    fn text(self, v: &str) -> Self {
        let mut w = self.u8(b't').u32(v.len() as u32);
        w.0.extend(v.as_bytes());
        w
    }
    fn binary(self, v: &[u8]) -> Self {
        let mut w = self.u8(b'b').u32(v.len() as u32);
        w.0.extend(v);
        w
    }
}

fn begin() -> Wire {
    Wire::tag(b'B').u64(0x1_0000_0010).u64(5).u32(731)
}

fn commit() -> Wire {
    Wire::tag(b'C').u8(0).u64(16).u64(72).u64(9)
}

fn relation() -> Wire {
    Wire::tag(b'R')
        .u32(16_384)
        .cstr("public")
        .cstr("outbox")
        .u8(b'f')
        .u16(2)
        .u8(1)
        .cstr("id")
        .u32(2950)
        .u32(u32::MAX)
        .u8(0)
        .cstr("note")
        .u32(1043)
        .u32(36)
}

fn update_with_old_row() -> Wire {
    Wire::tag(b'U')
        .u32(16_384)
        .u8(b'O')
        .u16(2)
        .text("1")
        .u8(b'n')
        .u8(b'N')
        .u16(2)
        .text("1")
        .u8(b'u')
}

fn truncate() -> Wire {
    Wire::tag(b'T').u32(2).u8(3).u32(16_384).u32(16_390)
}

fn emitted() -> Wire {
    Wire::tag(b'M')
        .u8(1)
        .u64(99)
        .cstr("outboxd")
        .u32(2)
        .u8(b'{')
        .u8(b'}')
}

fn stream_commit() -> Wire {
    Wire::tag(b'c').u32(900).u8(0).u64(40).u64(48).u64(7)
}

/// `wire` as sent inside a stream block: the xid right after the tag.
fn with_xid(wire: &Wire, xid: u32) -> Vec<u8> {
    let mut bytes = vec![wire.0[0]];
    bytes.extend(xid.to_be_bytes());
    bytes.extend(&wire.0[1..]);
    bytes
}

/// One well-formed message of every kind (as sent outside a stream block).
fn every_kind() -> Vec<Wire> {
    vec![
        begin(),
        commit(),
        Wire::tag(b'O').u64(12).cstr("upstream"),
        relation(),
        Wire::tag(b'Y').u32(17_000).cstr("public").cstr("mood"),
        Wire::tag(b'I').u32(1).u8(b'N').u16(1).text("x"),
        update_with_old_row(),
        Wire::tag(b'D').u32(1).u8(b'K').u16(1).text("x"),
        truncate(),
        emitted(),
        Wire::tag(b'S').u32(900).u8(1),
        Wire::tag(b'E'),
        stream_commit(),
        Wire::tag(b'A').u32(900).u32(901),
    ]
}

#[test]
fn begin_and_commit_carry_their_lsns() {
    assert_eq!(
        decode(&begin().0).unwrap(),
        Message::Begin {
            final_lsn: 0x1_0000_0010,
            commit_time: 5,
            xid: 731
        }
    );
    assert_eq!(
        decode(&commit().0).unwrap(),
        Message::Commit {
            commit_lsn: 16,
            end_lsn: 72,
            commit_time: 9
        }
    );
}

#[test]
fn origin_names_the_upstream_server_and_its_commit_lsn() {
    let origin = Wire::tag(b'O').u64(0xAB).cstr("node-a").0;
    assert_eq!(
        decode(&origin).unwrap(),
        Message::Origin {
            commit_lsn: 0xAB,
            name: "node-a"
        }
    );
}

#[test]
fn relation_carries_replica_identity_and_each_columns_key_flag_type_and_modifier() {
    let Message::Relation(rel) = decode(&relation().0).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(
        (rel.id, rel.namespace.as_str(), rel.name.as_str()),
        (16_384, "public", "outbox")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    let columns: Vec<_> = (rel.columns.iter())
        .map(|c| (c.key, c.name.as_str(), c.type_id, c.type_modifier))
        .collect();
    assert_eq!(columns, [(true, "id", 2950, -1), (false, "note", 1043, 36)]);
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'i', ReplicaIdentity::Index),
    ] {
        let wire = Wire::tag(b'R').u32(1).cstr("").cstr("t").u8(byte).u16(0).0;
        let Message::Relation(rel) = decode(&wire).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.replica_identity, identity);
    }
}

#[test]
fn type_names_a_user_defined_type() {
    let wire = Wire::tag(b'Y').u32(17_000).cstr("shop").cstr("mood").0;
    assert_eq!(
        decode(&wire).unwrap(),
        Message::Type {
            id: 17_000,
            namespace: "shop",
            name: "mood"
        }
    );
}

#[test]
fn insert_carries_null_text_and_binary_columns() {
    let insert = Wire::tag(b'I')
        .u32(16_384)
        .u8(b'N')
        .u16(3)
        .text("6f1c")
        .u8(b'n')
        .binary(&[0, 1, 255])
        .0;
    assert_eq!(
        decode(&insert).unwrap(),
        Message::Insert {
            relation_id: 16_384,
            values: vec![
                Value::Text(b"6f1c"),
                Value::Null,
                Value::Binary(&[0, 1, 255])
            ]
        }
    );
}

#[test]
fn update_carries_the_old_row_or_key_when_sent_and_unchanged_toast_markers() {
    assert_eq!(
        decode(&update_with_old_row().0).unwrap(),
        Message::Update {
            relation_id: 16_384,
            old: Some(OldRow::Row(vec![Value::Text(b"1"), Value::Null])),
            new: vec![Value::Text(b"1"), Value::Unchanged],
        }
    );
    let with_key = Wire::tag(b'U')
        .u32(7)
        .u8(b'K')
        .u16(1)
        .text("old")
        .u8(b'N')
        .u16(1)
        .text("new")
        .0;
    assert_eq!(
        decode(&with_key).unwrap(),
        Message::Update {
            relation_id: 7,
            old: Some(OldRow::Key(vec![Value::Text(b"old")])),
            new: vec![Value::Text(b"new")],
        }
    );
    let without_old = Wire::tag(b'U').u32(7).u8(b'N').u16(1).text("new").0;
    assert_eq!(
        decode(&without_old).unwrap(),
        Message::Update {
            relation_id: 7,
            old: None,
            new: vec![Value::Text(b"new")],
        }
    );
}

#[test]
fn delete_carries_the_old_key_or_row() {
    let by_key = Wire::tag(b'D').u32(7).u8(b'K').u16(1).text("42").0;
    assert_eq!(
        decode(&by_key).unwrap(),
        Message::Delete {
            relation_id: 7,
            old: OldRow::Key(vec![Value::Text(b"42")])
        }
    );
    let by_row = Wire::tag(b'D').u32(7).u8(b'O').u16(1).u8(b'n').0;
    assert_eq!(
        decode(&by_row).unwrap(),
        Message::Delete {
            relation_id: 7,
            old: OldRow::Row(vec![Value::Null])
        }
    );
}

#[test]
fn truncate_carries_its_options_and_every_relation() {
    let Message::Truncate {
        options,
        relation_ids,
    } = decode(&truncate().0).unwrap()
    else {
        panic!("not a truncate")
    };
    assert!(options.cascade() && options.restart_identity());
    assert_eq!(relation_ids, [16_384, 16_390]);
    let plain = Wire::tag(b'T').u32(1).u8(0).u32(5).0;
    let Message::Truncate { options, .. } = decode(&plain).unwrap() else {
        panic!("not a truncate")
    };
    assert!(!options.cascade() && !options.restart_identity());
}

#[test]
fn emitted_message_keeps_prefix_content_and_transactional_flag() {
    assert_eq!(
        decode(&emitted().0).unwrap(),
        Message::Message {
            transactional: true,
            lsn: 99,
            prefix: "outboxd",
            content: b"{}"
        }
    );
    let plain = Wire::tag(b'M').u8(0).u64(1).cstr("p").u32(0).0;
    let Message::Message { transactional, .. } = decode(&plain).unwrap() else {
        panic!("not a message")
    };
    assert!(!transactional);
}

#[test]
fn a_streamed_transaction_carries_its_xid_on_every_change_inside_a_block() {
    // Given a decoder following a session with streaming on
    let mut decoder = Decoder::default();
    let start = Wire::tag(b'S').u32(900).u8(1).0;
    let first = decoder.decode(&start).unwrap();
    assert_eq!(
        first.message,
        Message::StreamStart {
            xid: 900,
            first_segment: true
        }
    );
    // When change messages of each kind that can carry one arrive inside the block
    let kinds = every_kind();
    let changes = kinds
        .iter()
        .filter(|wire| b"RYIUDTM".contains(&wire.0[0]))
        .enumerate();
    let xids: Vec<Option<u32>> = changes
        .map(|(i, wire)| decoder.decode(&with_xid(wire, 900 + i as u32)).unwrap().xid)
        .collect();
    // Then the decoder reads it apart from the message
    assert_eq!(xids, (900..907).map(Some).collect::<Vec<_>>());
    assert_eq!(decoder.decode(b"E").unwrap().message, Message::StreamStop);
    // And after the block, the same kinds carry none again
    let insert = Wire::tag(b'I').u32(1).u8(b'N').u16(0).0;
    assert_eq!(decoder.decode(&insert).unwrap().xid, None);
    assert_eq!(
        decoder.decode(&stream_commit().0).unwrap().message,
        Message::StreamCommit {
            xid: 900,
            commit_lsn: 40,
            end_lsn: 48,
            commit_time: 7
        }
    );
}

#[test]
fn stream_abort_names_the_subtransaction_and_in_version_4_its_lsn_and_time() {
    let v2 = Wire::tag(b'A').u32(900).u32(905).0;
    assert_eq!(
        decode(&v2).unwrap(),
        Message::StreamAbort {
            xid: 900,
            subxid: 905,
            abort: None
        }
    );
    let v4 = Wire::tag(b'A').u32(900).u32(900).u64(64).u64(3).0;
    assert_eq!(
        decode(&v4).unwrap(),
        Message::StreamAbort {
            xid: 900,
            subxid: 900,
            abort: Some((64, 3))
        }
    );
}

#[test]
fn stream_blocks_out_of_order_are_errors() {
    let start = Wire::tag(b'S').u32(900).u8(0).0;
    let mut decoder = Decoder::default();
    let err = decoder.decode(b"E").unwrap_err();
    assert!(err.to_string().contains("stream stop without"), "{err}");
    decoder.decode(&start).unwrap();
    let err = decoder.decode(&start).unwrap_err();
    assert!(err.to_string().contains("inside the open block"), "{err}");
    let err = decoder.decode(&stream_commit().0).unwrap_err();
    assert!(err.to_string().contains("inside the open block"), "{err}");
    let err = decoder.decode(&begin().0).unwrap_err();
    assert!(err.to_string().contains("begin or commit inside"), "{err}");
    let bad_flag = Wire::tag(b'S').u32(1).u8(7).0;
    let err = decode(&bad_flag).unwrap_err();
    assert!(err.to_string().contains("flag 7"), "{err}");
}

#[test]
fn tags_of_later_versions_are_skipped() {
    for tag in [b'b', b'P', b'K', b'r', b'p'] {
        assert_eq!(decode(&[tag, 1, 2, 3]).unwrap(), Message::Other(tag));
    }
}

#[test]
fn every_truncation_of_every_kind_is_an_error_not_a_panic() {
    for wire in every_kind() {
        let bytes = wire.0;
        for len in 0..bytes.len() {
            let result = decode(&bytes[..len]);
            let err = result.expect_err(&format!("{:?} cut to {len} bytes decoded", bytes));
            assert_eq!(err.kind(), ErrorKind::Corrupt);
            assert!(err.to_string().starts_with("malformed pgoutput message: "));
        }
        decode(&bytes).unwrap_or_else(|err| panic!("{bytes:?}: {err}"));
    }
}

#[test]
fn a_byte_past_the_end_of_any_kind_is_an_error() {
    for wire in every_kind() {
        let tag = wire.0[0] as char;
        let bytes = wire.u8(0).0;
        let result = decode(&bytes);
        // Stream Abort of version 4 is longer, but not by one byte.
        let err = result.expect_err(&format!("{tag:?} with a trailing byte decoded"));
        assert!(
            err.to_string().contains("bytes after the end"),
            "{tag}: {err}"
        );
    }
}

#[test]
fn malformed_fields_are_named() {
    let cases: [(Vec<u8>, &str); 8] = [
        (
            Wire::tag(b'I').u32(1).u8(b'X').u16(0).0,
            "insert tuple marker 'X', expected 'N'",
        ),
        (
            Wire::tag(b'U').u32(1).u8(b'K').u16(0).u8(b'Q').0,
            "update tuple marker 'Q', expected 'N'",
        ),
        (
            Wire::tag(b'D').u32(1).u8(b'N').u16(0).0,
            "old tuple marker 'N', expected 'K' or 'O'",
        ),
        (
            Wire::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'z').0,
            "unknown column kind 'z'",
        ),
        (
            Wire::tag(b'R').u32(1).cstr("s").cstr("t").u8(b'x').u16(0).0,
            "replica identity 'x' of relation 1",
        ),
        (
            Wire::tag(b'R')
                .u32(1)
                .cstr("s")
                .cstr("t")
                .u8(b'd')
                .u16(65_535)
                .0,
            "65535 columns announced",
        ),
        (
            Wire::tag(b'T').u32(u32::MAX).u8(0).0,
            "4294967295 truncated relations announced",
        ),
        (
            Wire::tag(b'Y').u32(1).u8(0xFF).u8(0).cstr("t").0,
            "not UTF-8",
        ),
    ];
    for (bytes, expected) in cases {
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains(expected), "{err} ≠ {expected}");
    }
    let huge_text = Wire::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b't')
        .u32(u32::MAX)
        .0;
    let err = decode(&huge_text).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let column_count = Wire::tag(b'I').u32(1).u8(b'N').u16(65_535).0;
    let err = decode(&column_count).unwrap_err();
    assert!(err.to_string().contains("65535 columns announced"), "{err}");
}
