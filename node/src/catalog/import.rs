//! Reading instrument files (JSON Lines or CSV) into records, with the line
//! number of every row so that a rejection points at the row to fix.

use std::{collections::HashMap, fmt, path::Path};

use crate::catalog::model::InstrumentRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
}

impl Format {
    /// Chooses the format from a file's extension.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// A rejected import: the first bad row and why. Nothing of the file is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { f.write_str(&self.reason) } else { write!(f, "line {}: {}", self.line, self.reason) }
    }
}

impl std::error::Error for RowError {}

fn row_err(line: u64, reason: impl Into<String>) -> RowError {
    RowError { line, reason: reason.into() }
}

/// A record with the line of the file it came from.
pub type Row = (u64, InstrumentRecord);

/// Parses a whole file. Fails on the first row that does not parse.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Vec<Row>, RowError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        row_err(line, "not UTF-8 text; save the file as UTF-8")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rows = match format {
        Format::JsonLines => parse_jsonl(text)?,
        Format::Csv => parse_csv(text)?,
    };
    if rows.is_empty() {
        return Err(row_err(0, "the file holds no instrument rows"));
    }
    Ok(rows)
}

fn parse_jsonl(text: &str) -> Result<Vec<Row>, RowError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: InstrumentRecord = serde_json::from_str(line).map_err(|e| {
            // serde_json counts within the one line; the column is still useful.
            let msg = e.to_string();
            let msg = msg.split(" at line 1 column ").next().unwrap_or(&msg).to_string();
            row_err(n, format!("{msg} (column {})", e.column()))
        })?;
        rows.push((n, record));
    }
    Ok(rows)
}

fn parse_csv(text: &str) -> Result<Vec<Row>, RowError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| row_err(1, format!("header: {e}")))?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            row_err(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let parsed: InstrumentRecord = record.deserialize(Some(&headers)).map_err(|e| {
            let msg = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => match err.field() {
                    Some(i) => format!("column {:?}: {}", headers.get(i as usize).unwrap_or("?"), err.kind()),
                    None => err.kind().to_string(),
                },
                _ => e.to_string(),
            };
            row_err(line, msg)
        })?;
        rows.push((line, parsed));
    }
    Ok(rows)
}

/// Validates every row for `city` and refuses a local id that appears twice.
pub fn check_rows(city: &str, rows: &[Row]) -> Result<(), RowError> {
    let mut seen: HashMap<&str, u64> = HashMap::with_capacity(rows.len());
    for (line, record) in rows {
        record.validate(city).map_err(|e| row_err(*line, e.to_string()))?;
        if let Some(first) = seen.insert(&record.local_id, *line) {
            return Err(row_err(*line, format!("local_id {:?} already appears on line {first}", record.local_id)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::tests::sample;

    fn jsonl(records: &[InstrumentRecord]) -> String {
        records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect()
    }

    #[test]
    fn jsonl_rows_keep_their_line_numbers() {
        let text = format!("{}\n{}", jsonl(&[sample("a")]), jsonl(&[sample("b")]));
        let rows = parse(Format::JsonLines, text.as_bytes()).unwrap();
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3]);
        check_rows("hefei", &rows).unwrap();
    }

    #[test]
    fn one_bad_row_names_its_line_and_field() {
        let mut bad = sample("b");
        bad.category = "x".into();
        let text = jsonl(&[sample("a"), bad, sample("c")]);
        let rows = parse(Format::JsonLines, text.as_bytes()).unwrap();
        let err = check_rows("hefei", &rows).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("line 2: category:"), "{err}");
    }

    #[test]
    fn an_oversized_record_names_its_line_and_field() {
        let mut big = sample("b");
        big.description = "说明".repeat(5 << 20);
        let text = jsonl(&[sample("a"), big]);
        let rows = parse(Format::JsonLines, text.as_bytes()).unwrap();
        let err = check_rows("hefei", &rows).unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: description: is 31457280 bytes long"),
            "{}",
            &err.to_string()[..80]
        );
        assert!(err.to_string().len() < 200, "the refusal does not repeat the value");
    }

    #[test]
    fn unknown_fields_and_broken_json_are_refused() {
        let err = parse(Format::JsonLines, b"{\"local_id\":\"a\",\"colour\":1}\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("unknown field `colour`"), "{err}");
        let err = parse(Format::JsonLines, b"\n{not json\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse(Format::JsonLines, b"\n\n").unwrap_err().reason.contains("no instrument rows"));
        assert_eq!(parse(Format::JsonLines, b"{}\n\xff\n").unwrap_err().line, 2);
    }

    #[test]
    fn duplicate_local_ids_are_refused() {
        let text = jsonl(&[sample("a"), sample("b"), sample("a")]);
        let rows = parse(Format::JsonLines, text.as_bytes()).unwrap();
        let err = check_rows("hefei", &rows).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("already appears on line 1"));
    }

    #[test]
    fn csv_with_lists_and_enums_parses_like_jsonl() {
        let r = sample("nmr-7");
        let header = "local_id,name_zh,name_en,category,techniques,institution_name,institution_uscc,service_modes,accreditations,price_internal_fen,training_required";
        let row = format!(
            "nmr-7,{},\"{}\",01.06.01,1H; 13C,{},{},staff_operated,CMA,20000,true",
            r.name_zh, r.name_en, r.institution_name, r.institution_uscc
        );
        let rows = parse(Format::Csv, format!("{header}\n{row}\n").as_bytes()).unwrap();
        let (line, got) = &rows[0];
        assert_eq!(*line, 2);
        assert_eq!(got.techniques, vec!["1H", "13C"]);
        assert_eq!(got.service_modes, r.service_modes);
        assert!(got.training_required);
        assert!(got.accepts_vouchers, "defaults to accepting vouchers");
        check_rows("hefei", &rows).unwrap();

        let bad = format!("{header}\n{row}\n{}\n", row.replace("staff_operated", "teleported"));
        let err = parse(Format::Csv, bad.as_bytes()).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("service_modes"), "{err}");
    }
}
