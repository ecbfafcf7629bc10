//! One test per type: the text `pgoutput` sends, and the JSON it becomes.

use super::*;

/// The JSON of `text` as a value of `oid` with no user types.
fn json(oid: u32, text: &str) -> String {
    let mut out = String::new();
    write(&mut out, &Types::default(), oid, text).unwrap();
    out
}

/// The reason `text` is refused as a value of `oid`.
fn refused(oid: u32, text: &str) -> String {
    write(&mut String::new(), &Types::default(), oid, text).unwrap_err()
}

#[test]
fn integers_are_numbers() {
    assert_eq!(json(21, "-32768"), "-32768");
    assert_eq!(json(23, "42"), "42");
    assert_eq!(json(20, "9223372036854775807"), "9223372036854775807");
    assert_eq!(json(26, "16384"), "16384");
    assert!(refused(23, "4x").contains("not an integer"));
}

#[test]
fn integers_copied_as_they_are_are_json_numbers_and_the_rest_is_parsed() {
    for plain in ["0", "7", "-7", "123456789012345678", "-123456789012345678"] {
        assert!(is_plain_integer(plain), "{plain}");
        assert_eq!(json(20, plain), plain);
    }
    // Not JSON's form, or maybe past 64 bits: parsed, and written back or refused.
    for (text, written) in [
        ("-0", "0"),
        ("007", "7"),
        ("+5", "5"),
        ("-9223372036854775808", "-9223372036854775808"),
    ] {
        assert!(!is_plain_integer(text), "{text}");
        assert_eq!(json(20, text), written);
    }
    for bad in ["", "-", "1 ", "99999999999999999999", "1.0"] {
        assert!(!is_plain_integer(bad), "{bad}");
        assert!(refused(20, bad).contains("not an integer"), "{bad}");
    }
}

#[test]
fn numeric_is_an_exact_string_with_nan_and_infinity_kept() {
    assert_eq!(
        json(1700, "12345678901234567890.000001"),
        r#""12345678901234567890.000001""#
    );
    assert_eq!(json(1700, "NaN"), r#""NaN""#);
    assert_eq!(json(1700, "-Infinity"), r#""-Infinity""#);
}

#[test]
fn floats_are_numbers_and_nan_and_infinity_strings() {
    assert_eq!(json(701, "1.5"), "1.5");
    assert_eq!(json(700, "0.1"), "0.1");
    assert_eq!(json(701, "1e+300"), "1e+300");
    assert_eq!(json(701, "NaN"), r#""NaN""#);
    assert_eq!(json(701, "Infinity"), r#""Infinity""#);
    assert_eq!(json(700, "-Infinity"), r#""-Infinity""#);
}

#[test]
fn booleans_are_true_and_false() {
    assert_eq!(json(16, "t"), "true");
    assert_eq!(json(16, "f"), "false");
    assert!(refused(16, "yes").contains("not a boolean"));
}

#[test]
fn text_types_and_uuid_are_strings() {
    assert_eq!(json(25, "a \"quoted\"\nline"), r#""a \"quoted\"\nline""#);
    assert_eq!(json(1043, "varchar"), r#""varchar""#);
    assert_eq!(json(1042, "x   "), r#""x   ""#);
    assert_eq!(
        json(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
    );
}

#[test]
fn json_and_jsonb_are_embedded_not_quoted() {
    assert_eq!(
        json(114, r#"{"b": 1, "a": [true]}"#),
        r#"{"b": 1, "a": [true]}"#
    );
    assert_eq!(json(3802, "null"), "null");
    assert!(refused(3802, "{oops").contains("invalid JSON"));
}

#[test]
fn bytea_is_base64() {
    assert_eq!(json(17, "\\x"), r#""""#);
    assert_eq!(json(17, "\\x00ff10"), r#""AP8Q""#);
    assert_eq!(json(17, "\\x6869"), r#""aGk=""#);
    assert_eq!(json(17, "\\x616263"), r#""YWJj""#);
    assert!(refused(17, "abc").contains("hex"));
}

#[test]
fn dates_and_times_are_iso_8601() {
    assert_eq!(json(1082, "2020-01-02"), r#""2020-01-02""#);
    assert_eq!(json(1082, "infinity"), r#""infinity""#);
    assert_eq!(json(1083, "03:04:05.5"), r#""03:04:05.5""#);
    assert_eq!(json(1266, "03:04:05+02"), r#""03:04:05+02:00""#);
    assert_eq!(
        json(1114, "2020-01-02 03:04:05"),
        r#""2020-01-02T03:04:05""#
    );
    assert_eq!(
        json(1184, "2020-01-02 03:04:05.1+00"),
        r#""2020-01-02T03:04:05.1+00:00""#
    );
    assert_eq!(json(1184, "-infinity"), r#""-infinity""#);
}

#[test]
fn interval_is_an_iso_duration() {
    assert_eq!(json(1186, "1 day 01:00:00"), r#""P1DT1H""#);
}

#[test]
fn arrays_nest_keep_nulls_and_map_their_elements() {
    assert_eq!(json(1007, "{1,NULL,3}"), "[1,null,3]");
    assert_eq!(json(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(
        json(1009, r#"{a,"b c",NULL,"NULL"}"#),
        r#"["a","b c",null,"NULL"]"#
    );
    assert_eq!(json(1000, "{t,f}"), "[true,false]");
    assert_eq!(json(3807, r#"{"{\"a\": 1}",NULL}"#), r#"[{"a": 1},null]"#);
    assert_eq!(
        json(1185, r#"{"2020-01-02 03:04:05+00"}"#),
        r#"["2020-01-02T03:04:05+00:00"]"#
    );
    assert_eq!(json(1231, "{1.50,NaN}"), r#"["1.50","NaN"]"#);
    assert_eq!(json(1007, "{}"), "[]");
}

#[test]
fn domains_take_their_base_type_and_enums_their_label() {
    let mut types = Types::default();
    types.domains.insert(90_001, 23); // CREATE DOMAIN positive AS int4
    types.domains.insert(90_002, 90_001); // a domain over that domain
    types.arrays.insert(90_003, 90_001); // positive[]
    let mut out = String::new();
    write(&mut out, &types, 90_002, "7").unwrap();
    out.push(' ');
    write(&mut out, &types, 90_003, "{1,NULL}").unwrap();
    out.push(' ');
    write(&mut out, &types, 90_004, "happy").unwrap(); // an enum: its label
    assert_eq!(out, r#"7 [1,null] "happy""#);
}

#[test]
fn anything_else_is_its_text_form() {
    assert_eq!(json(600, "(1,2)"), r#""(1,2)""#); // point
    assert_eq!(json(869, "10.0.0.1"), r#""10.0.0.1""#); // inet
}

#[test]
fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
    let mut every_control: String = (0u8..0x20).map(char::from).collect();
    every_control.push_str("\"\\/\u{7f}é😀 plain");
    for text in [
        "",
        "plain",
        "a\"b\\c",
        "line\nbreak\ttab\r",
        "\u{1}\u{1f}x",
        &every_control,
    ] {
        let mut out = String::new();
        string(&mut out, text);
        assert_eq!(out, serde_json::to_string(text).unwrap(), "{text:?}");
    }
}
