//! PostgreSQL's array text form (`{1,2,NULL}`, `{{"a b","c\"d"},{e,NULL}}`, `[0:1]={1,2}`)
//! read into nested elements, each the text form of its element type or NULL.

/// One item of an array: a nested array (another dimension), or an element's text.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A nested array.
    Array(Vec<Item>),
    /// An element's text form (quotes and escapes removed).
    Text(String),
    /// An unquoted NULL.
    Null,
}

/// Parses an array literal with `,` between elements (every built-in type but `box`); `None`
/// if the text is not one.
pub fn parse(text: &str) -> Option<Vec<Item>> {
    // Explicit bounds (`[0:1]={...}`) are dropped: JSON arrays start at 0.
    let text = match text.starts_with('[') {
        true => &text[text.find('=')? + 1..],
        false => text,
    };
    let mut chars = text.chars().peekable();
    let items = array(&mut chars)?;
    chars.next().is_none().then_some(items)
}

/// Reads `{…}` from the opening brace.
fn array(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Vec<Item>> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(items);
    }
    loop {
        let item = match chars.peek()? {
            '{' => Item::Array(array(chars)?),
            '"' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next()? {
                        '\\' => text.push(chars.next()?),
                        '"' => break,
                        c => text.push(c),
                    }
                }
                Item::Text(text)
            }
            _ => {
                let mut text = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                    }
                    text.push(chars.next()?);
                }
                match text.eq_ignore_ascii_case("NULL") {
                    true => Item::Null,
                    false => Item::Text(text.trim().to_owned()),
                }
            }
        };
        items.push(item);
        match chars.next()? {
            ',' => continue,
            '}' => return Some(items),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Item {
        Item::Text(s.into())
    }

    #[test]
    fn flat_arrays_keep_nulls_and_quoted_text() {
        assert_eq!(parse("{}").unwrap(), vec![]);
        assert_eq!(
            parse(r#"{1,NULL,"NULL","a,b","c\"d\\e"}"#).unwrap(),
            vec![
                text("1"),
                Item::Null,
                text("NULL"),
                text("a,b"),
                text("c\"d\\e")
            ]
        );
    }

    #[test]
    fn several_dimensions_nest_and_bounds_are_dropped() {
        assert_eq!(
            parse("{{1,2},{3,NULL}}").unwrap(),
            vec![
                Item::Array(vec![text("1"), text("2")]),
                Item::Array(vec![text("3"), Item::Null])
            ]
        );
        assert_eq!(parse("[0:1]={7,8}").unwrap(), vec![text("7"), text("8")]);
    }

    #[test]
    fn broken_literals_are_refused() {
        for bad in ["", "{1,2", "1,2}", "{\"a}", "{1}x"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
