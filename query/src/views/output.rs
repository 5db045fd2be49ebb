//! View output encodings: `json` (one array of row objects), `ndjson`, `csv` and `parquet`,
//! written batch by batch so a large result streams.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use fhirlake_schemas::json::Json;
use parquet::arrow::ArrowWriter;

use super::{ColumnInfo, json_rows};
use crate::Result;

/// An output format of `$run` and `fhirlake view run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Parquet,
}

impl Format {
    /// Parses `_format` (a short name or a media type).
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "json" | "application/json" | "application/fhir+json" => Format::Json,
            "ndjson" | "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson" => Format::Ndjson,
            "csv" | "text/csv" => Format::Csv,
            "parquet" | "application/vnd.apache.parquet" | "application/parquet" => Format::Parquet,
            _ => return None,
        })
    }

    /// The media type served.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Encodes batches of view rows into one output.
pub struct Encoder {
    format: Format,
    columns: Vec<ColumnInfo>,
    rows: usize,
    parquet: Option<ArrowWriter<Vec<u8>>>,
}

impl Encoder {
    /// An encoder for rows with `schema` (the view plan's output schema).
    pub fn new(format: Format, columns: Vec<ColumnInfo>, schema: SchemaRef) -> Result<Self> {
        let parquet = match format {
            Format::Parquet => Some(ArrowWriter::try_new(Vec::new(), schema, None)?),
            _ => None,
        };
        Ok(Encoder { format, columns, rows: 0, parquet })
    }

    /// Bytes that open the output.
    pub fn begin(&self) -> Vec<u8> {
        match self.format {
            Format::Json => b"[".to_vec(),
            Format::Csv => {
                let mut line = String::new();
                for (i, c) in self.columns.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    csv_field(&mut line, &c.name);
                }
                line.push('\n');
                line.into_bytes()
            }
            _ => vec![],
        }
    }

    /// Bytes for one batch (none for parquet, which is written at the end).
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>> {
        if let Some(w) = &mut self.parquet {
            w.write(batch)?;
            return Ok(vec![]);
        }
        let rows = json_rows(std::slice::from_ref(batch), &self.columns)?;
        let mut out = String::new();
        for row in rows {
            match self.format {
                Format::Json | Format::Ndjson => {
                    if self.format == Format::Json && self.rows > 0 {
                        out.push(',');
                    }
                    let obj = Json::Object(self.columns.iter().map(|c| c.name.clone()).zip(row).collect());
                    obj.write_to(&mut out);
                    if self.format == Format::Ndjson {
                        out.push('\n');
                    }
                }
                Format::Csv => {
                    for (i, v) in row.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        match v {
                            Json::Null => {}
                            Json::String(s) => csv_field(&mut out, s),
                            Json::Number(n) => out.push_str(n),
                            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                            other => csv_field(&mut out, &other.to_json_string()),
                        }
                    }
                    out.push('\n');
                }
                Format::Parquet => unreachable!("parquet is written by the ArrowWriter"),
            }
            self.rows += 1;
        }
        Ok(out.into_bytes())
    }

    /// Bytes that close the output.
    pub fn finish(self) -> Result<Vec<u8>> {
        if let Some(w) = self.parquet {
            return Ok(w.into_inner()?);
        }
        Ok(match self.format {
            Format::Json => b"]".to_vec(),
            _ => vec![],
        })
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}
