//! The CSV that `tabdump <table>` prints (xCAT `tabutils.pm` `output_table`): a header
//! `#col1,col2,...`, then one record per row in which every defined value is written in double
//! quotes with inner quotes doubled and NULL is written as nothing. So `,,` is NULL and `,"",` is the
//! empty string, which xCAT treats differently. A quoted value may hold newlines, so a record may span
//! several lines. Pure: parses a string, no I/O.

use crate::table::{Row, Table};

/// A parse error with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub message: String,
}

/// Parse a whole tabdump file. `origin` names the file in the rows' locations.
pub fn parse(table: &str, origin: &str, text: &str) -> Result<Table, CsvError> {
    let mut p = Parser { chars: text.chars().peekable(), line: 1 };
    // The header: the first non-blank line, starting with `#`.
    let header_line;
    let header = loop {
        match p.chars.peek() {
            None => return Err(CsvError { line: p.line, message: "empty file: no `#col,...` header".into() }),
            Some('\n') | Some('\r') => {
                p.bump();
            }
            Some('#') => {
                header_line = p.line;
                p.bump();
                let mut h = String::new();
                while let Some(&c) = p.chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    p.bump();
                    if c != '\r' {
                        h.push(c);
                    }
                }
                break h;
            }
            Some(_) => {
                return Err(CsvError {
                    line: p.line,
                    message: "no header: tabdump output starts with `#col1,col2,...`".into(),
                })
            }
        }
    };
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
    if columns.iter().any(String::is_empty) {
        return Err(CsvError { line: header_line, message: format!("header `#{header}` has an empty column name") });
    }
    let mut rows = Vec::new();
    loop {
        // Skip blank lines between records.
        while matches!(p.chars.peek(), Some('\n') | Some('\r')) {
            p.bump();
        }
        if p.chars.peek().is_none() {
            break;
        }
        let start = p.line;
        let values = p.record()?;
        if values.len() != columns.len() {
            return Err(CsvError {
                line: start,
                message: format!(
                    "record has {} fields, the header names {} columns ({})",
                    values.len(),
                    columns.len(),
                    columns.join(",")
                ),
            });
        }
        rows.push(Row { location: format!("{origin}:{start}"), values });
    }
    Ok(Table { name: table.to_string(), origin: origin.to_string(), columns, rows })
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl Parser<'_> {
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next();
        if c == Some('\n') {
            self.line += 1;
        }
        c
    }

    /// One record: fields up to an unquoted newline or the end of input.
    fn record(&mut self) -> Result<Vec<Option<String>>, CsvError> {
        let mut out = Vec::new();
        loop {
            out.push(self.field()?);
            match self.bump() {
                Some(',') => continue,
                None | Some('\n') => return Ok(out),
                Some('\r') if matches!(self.chars.peek(), Some('\n') | None) => {
                    self.bump();
                    return Ok(out);
                }
                Some(c) => {
                    return Err(CsvError {
                        line: self.line,
                        message: format!(
                            "unexpected `{}` after a field; expected `,` or end of line",
                            c.escape_debug()
                        ),
                    })
                }
            }
        }
    }

    /// One field; stops before the separator. `None` for NULL (nothing between separators).
    fn field(&mut self) -> Result<Option<String>, CsvError> {
        match self.chars.peek() {
            Some('"') => {
                let open = self.line;
                self.bump();
                let mut v = String::new();
                loop {
                    match self.bump() {
                        None => {
                            return Err(CsvError {
                                line: open,
                                message: "quoted value is never closed (a `\"` is missing)".into(),
                            })
                        }
                        Some('"') => {
                            if self.chars.peek() == Some(&'"') {
                                self.bump();
                                v.push('"');
                            } else {
                                break;
                            }
                        }
                        Some(c) => v.push(c),
                    }
                }
                match self.chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => Ok(Some(v)),
                    Some(c) => Err(CsvError {
                        line: self.line,
                        message: format!(
                            "`{}` right after a closing quote; inner quotes must be doubled (`\"\"`)",
                            c.escape_debug()
                        ),
                    }),
                }
            }
            _ => {
                // Unquoted: tabdump writes only NULL this way; a hand-edited bare value is taken as is.
                let mut v = String::new();
                while let Some(&c) = self.chars.peek() {
                    if c == ',' || c == '\n' || c == '\r' {
                        break;
                    }
                    if c == '"' {
                        return Err(CsvError {
                            line: self.line,
                            message: "a `\"` inside an unquoted value; quote the whole value".into(),
                        });
                    }
                    v.push(c);
                    self.bump();
                }
                Ok(if v.is_empty() { None } else { Some(v) })
            }
        }
    }
}

/// Write a table the way `tabdump` does (used by the fixture generator and round-trip tests).
pub fn write(columns: &[&str], rows: &[Vec<Option<String>>]) -> String {
    let mut out = format!("#{}\n", columns.join(","));
    for r in rows {
        let mut line = String::new();
        for v in r {
            match v {
                Some(s) => {
                    line.push('"');
                    line.push_str(&s.replace('"', "\"\""));
                    line.push_str("\",");
                }
                None => line.push(','),
            }
        }
        line.pop();
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_versus_empty_and_quotes() {
        let t = parse("site", "site.csv", "#key,value,comments,disable\n\"a\",\"x \"\"y\"\"\",,\n\"b\",\"\",\"\",\n")
            .unwrap();
        assert_eq!(t.columns, ["key", "value", "comments", "disable"]);
        assert_eq!(t.rows[0].values, [Some("a".into()), Some("x \"y\"".into()), None, None]);
        assert_eq!(t.rows[1].values, [Some("b".into()), Some("".into()), Some("".into()), None]);
        assert_eq!(t.rows[1].location, "site.csv:3");
    }

    #[test]
    fn multi_line_values_keep_line_numbers() {
        let text = "#key,value,comments,disable\n\"a\",\"one\ntwo\n\",,\n\"b\",\"v\",,\n";
        let t = parse("site", "s.csv", text).unwrap();
        assert_eq!(t.rows[0].values[1].as_deref(), Some("one\ntwo\n"));
        assert_eq!(t.rows[1].location, "s.csv:5");
    }

    #[test]
    fn round_trip() {
        let rows = vec![
            vec![Some("a,b".to_string()), None, Some(String::new())],
            vec![Some("q\"\"".into()), Some("l1\nl2".into()), None],
        ];
        let text = write(&["x", "y", "z"], &rows);
        let t = parse("t", "t.csv", &text).unwrap();
        assert_eq!(t.rows.iter().map(|r| r.values.clone()).collect::<Vec<_>>(), rows);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("t", "t.csv", "#a,b\n\"1\",\"2\"\n\"3\"\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("1 fields"), "{}", e.message);
        let e = parse("t", "t.csv", "#a,b\n\"1\",\"2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("never closed"));
        let e = parse("t", "t.csv", "#a,b\n\"1\",\"2\"x\n").unwrap_err();
        assert!(e.message.contains("doubled"), "{}", e.message);
        let e = parse("t", "t.csv", "a,b\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("t", "t.csv", "#a,b\n1,x\"y\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    proptest::proptest! {
        /// Whatever the values (quotes, commas, newlines, empty strings, NULLs), what tabdump writes
        /// parses back to the same values.
        #[test]
        fn any_table_round_trips(rows in proptest::collection::vec(
            proptest::collection::vec(proptest::option::of("[a-z\",\n\r #|$/]{0,8}"), 3),
            0..6,
        )) {
            let text = write(&["a", "b", "c"], &rows);
            let t = parse("t", "t.csv", &text).unwrap();
            proptest::prop_assert_eq!(t.rows.into_iter().map(|r| r.values).collect::<Vec<_>>(), rows);
        }
    }

    #[test]
    fn crlf() {
        let t = parse("t", "t.csv", "#a,b\r\n\"1\",\r\n,\"2\"\r\n").unwrap();
        assert_eq!(t.rows[0].values, [Some("1".into()), None]);
        assert_eq!(t.rows[1].values, [None, Some("2".into())]);
    }
}
