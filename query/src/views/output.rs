//! Result encodings shared by `$run`, `$sql` and `fhirlake sql`: `json` (one array of row
//! objects, nulls explicit, decimals as JSON numbers, timestamps RFC 3339), `ndjson`,
//! `csv`, `arrow` (IPC stream) and `parquet`, written batch by batch so a large result
//! streams.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::ipc::writer::StreamWriter;
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
    Arrow,
    Parquet,
}

impl Format {
    /// Parses `_format` (a short name or a media type).
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "json" | "application/json" | "application/fhir+json" => Format::Json,
            "ndjson" | "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson" => Format::Ndjson,
            "csv" | "text/csv" => Format::Csv,
            "arrow" | "application/vnd.apache.arrow.stream" => Format::Arrow,
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
            Format::Arrow => "application/vnd.apache.arrow.stream",
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
    ipc: Option<StreamWriter<Vec<u8>>>,
}

impl Encoder {
    /// An encoder for rows with `schema` (the view plan's output schema).
    pub fn new(format: Format, columns: Vec<ColumnInfo>, schema: SchemaRef) -> Result<Self> {
        let parquet = match format {
            Format::Parquet => Some(ArrowWriter::try_new(Vec::new(), schema.clone(), None)?),
            _ => None,
        };
        let ipc = match format {
            Format::Arrow => Some(StreamWriter::try_new(Vec::new(), &schema)?),
            _ => None,
        };
        Ok(Encoder { format, columns, rows: 0, parquet, ipc })
    }

    /// An encoder for any result: columns named as in `schema`, lists as collections.
    pub fn for_schema(format: Format, schema: SchemaRef) -> Result<Self> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                fhir_type: None,
                collection: matches!(f.data_type(), DataType::List(_) | DataType::LargeList(_)),
            })
            .collect();
        Self::new(format, columns, schema)
    }

    /// Bytes that open the output.
    pub fn begin(&mut self) -> Vec<u8> {
        if let Some(w) = &mut self.ipc {
            return std::mem::take(w.get_mut());
        }
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
        if let Some(w) = &mut self.ipc {
            w.write(batch)?;
            return Ok(std::mem::take(w.get_mut()));
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
                Format::Parquet | Format::Arrow => unreachable!("written by the Parquet / IPC writers"),
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
        if let Some(mut w) = self.ipc {
            w.finish()?;
            return Ok(std::mem::take(w.get_mut()));
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
