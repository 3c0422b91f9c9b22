//! The Hugging Face hub's parquet copy of CIFAR-10 (`uoft-cs/cifar10`), read with the `parquet` crate.
//!
//! The hub's schema for image classification: a column `img` (or `image`), a struct {`bytes`: binary — the
//! encoded PNG/JPEG file —, `path`: string}, and a column `label` (int64, a `ClassLabel` whose names the file's
//! `huggingface` schema metadata lists). The repository holds one file per split on its main branch,
//! `plain_text/{train,test}-00000-of-00001.parquet`; the hub's automatic conversion, the revision
//! `refs/convert/parquet` that candle-datasets reads, names them `plain_text/{train,test}/0000.parquet`.
//!
//! Images are decoded with the `image` crate into the same upright channel-first [`ImageSet`] as the other
//! loaders: row 0 is the top of the picture. (candle-datasets' hub loader reads the decoded interleaved
//! height × width × channel bytes as a channel-first tensor; the tests check this one against Pillow's pixels,
//! the sky at the top, and the transposed images.)

use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use vsdm_core::hub::{Hub, HubRef, RepoKind};

use super::folder::channel_first;
use super::{ImageSet, CIFAR10_CLASSES};
use crate::error::{Error, Result};

/// The hub repository of CIFAR-10.
pub const CIFAR10_REPO: &str = "uoft-cs/cifar10";

/// Names the image column may have, in the order they are looked for.
pub const IMAGE_COLUMNS: [&str; 2] = ["img", "image"];
/// The label column.
pub const LABEL_COLUMN: &str = "label";

/// A split of a hub data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// The repository paths of this split: the main branch's file first, then the `refs/convert/parquet` one
    /// (the other way round when `revision` is a `refs/convert/…` ref).
    pub fn hub_files(self, revision: &str) -> [String; 2] {
        let s = self.name();
        let main = format!("plain_text/{s}-00000-of-00001.parquet");
        let converted = format!("plain_text/{s}/0000.parquet");
        if revision.starts_with("refs/convert/") {
            [converted, main]
        } else {
            [main, converted]
        }
    }
}

/// Reads a split of a hub data set in CIFAR-10's parquet layout, `hf:OWNER/NAME[@REV]` (a dataset repository,
/// e.g. `hf:uoft-cs/cifar10`): from `hub`'s local cache, else downloaded into it.
pub fn open_hub(hub: &Hub, r: &HubRef, split: Split) -> Result<ImageSet> {
    let files = split.hub_files(r.revision());
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let (path, file) = hub.first_of(r, RepoKind::Dataset, &names)?;
    tracing::info!(data = %r, file, path = %path.display(), "hub parquet file");
    load_parquet(&path)
}

/// Reads parquet files in order and concatenates them (shards of one split); their class names must agree.
pub fn load_parquet_files(paths: &[PathBuf]) -> Result<ImageSet> {
    let mut all: Option<ImageSet> = None;
    for p in paths {
        let set = load_parquet(p)?;
        match &mut all {
            None => all = Some(set),
            Some(a) if a.classes != set.classes => {
                return Err(Error::bad_file(
                    p,
                    format!(
                        "class names {:?} differ from those of {}: {:?}",
                        set.classes,
                        paths[0].display(),
                        a.classes
                    ),
                ))
            }
            Some(a) => {
                a.pixels.extend(set.pixels);
                a.labels.extend(set.labels);
            }
        }
    }
    all.ok_or_else(|| Error::invalid("data", "no files", "needs at least one parquet file"))
}

/// Reads one parquet file in the hub's image-classification schema. A file that is not parquet, a missing
/// column, a row whose image does not decode or is not 32×32, or a label outside the class names is an error
/// naming the file (and the row, counted from 0).
pub fn load_parquet(path: &Path) -> Result<ImageSet> {
    // The parquet reader may give up on corrupt bytes by panicking; that must not take the program down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(path))).unwrap_or_else(|_| {
        Err(Error::bad_file(
            path,
            "corrupt parquet data (the parquet reader could not go on)",
        ))
    })
}

fn read(path: &Path) -> Result<ImageSet> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::bad_file(path, format!("not a readable parquet file: {e}")))?;
    let meta = reader.metadata().file_metadata();
    let classes = class_names(path, meta.key_value_metadata())?;
    let fields = meta.schema_descr().root_schema().get_fields().to_vec();
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    let column = |want: &[&str]| {
        want.iter()
            .find_map(|w| fields.iter().find(|f| f.name() == *w).cloned())
            .ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!(
                        "no column `{}` (columns: {}); expected the Hugging Face image-classification schema: \
                         img {{bytes, path}}, label",
                        want.join("` or `"),
                        names.join(", ")
                    ),
                )
            })
    };
    let img_col = column(&IMAGE_COLUMNS)?;
    let label_col = column(&[LABEL_COLUMN])?;
    if !img_col.is_group() || !img_col.get_fields().iter().any(|f| f.name() == "bytes") {
        return Err(Error::bad_file(
            path,
            format!(
                "column `{}` is not a struct with a `bytes` field (the hub's Image feature)",
                img_col.name()
            ),
        ));
    }
    let (img_name, label_name) = (img_col.name().to_string(), label_col.name().to_string());
    let projection = Type::group_type_builder("schema")
        .with_fields(vec![img_col, label_col])
        .build()
        .map_err(|e| Error::bad_file(path, format!("schema: {e}")))?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| Error::bad_file(path, format!("cannot read rows: {e}")))?;
    let expected = usize::try_from(meta.num_rows()).unwrap_or(0);
    let mut set = ImageSet {
        pixels: Vec::with_capacity(expected.min(1 << 20) * super::IMAGE_BYTES),
        labels: Vec::with_capacity(expected.min(1 << 20)),
        classes,
    };
    for (i, row) in rows.enumerate() {
        let at = |why: String| Error::bad_file(path, format!("row {i}: {why}"));
        let row = row.map_err(|e| at(format!("unreadable: {e}")))?;
        let (bytes, label) = row_values(&row, &img_name, &label_name).map_err(at)?;
        super::folder::jpeg_complete(bytes)
            .map_err(|why| at(format!("`{img_name}.bytes`: {why}")))?;
        let img = image::load_from_memory(bytes)
            .map_err(|e| at(format!("`{img_name}.bytes` is not a decodable image: {e}")))?;
        set.pixels
            .extend(channel_first(&img).map_err(|why| at(format!("`{img_name}`: {why}")))?);
        if label < 0 || label as usize >= set.classes.len() {
            return Err(at(format!(
                "`{label_name}` = {label}, expected 0–{} ({} classes)",
                set.classes.len() - 1,
                set.classes.len()
            )));
        }
        set.labels.push(label as u8);
    }
    if set.is_empty() {
        return Err(Error::bad_file(path, "no rows"));
    }
    tracing::info!(file = %path.display(), images = set.len(), classes = set.classes.len(), "parquet loaded");
    Ok(set)
}

/// The encoded image bytes and the label of one row.
fn row_values<'a>(
    row: &'a Row,
    img_name: &str,
    label_name: &str,
) -> std::result::Result<(&'a [u8], i64), String> {
    let get = |name: &str| {
        row.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f)
            .ok_or_else(|| format!("no `{name}`"))
    };
    let bytes = match get(img_name)? {
        Field::Group(g) => match g.get_column_iter().find(|(n, _)| n.as_str() == "bytes") {
            Some((_, Field::Bytes(b))) => b.data(),
            Some((_, Field::Null)) | None => return Err(format!("`{img_name}.bytes` is null")),
            Some((_, other)) => return Err(format!("`{img_name}.bytes` is {other}, not binary")),
        },
        Field::Null => return Err(format!("`{img_name}` is null")),
        other => return Err(format!("`{img_name}` is {other}, not a struct")),
    };
    let label = match get(label_name)? {
        Field::Long(v) => *v,
        Field::Int(v) => *v as i64,
        Field::Short(v) => *v as i64,
        Field::Byte(v) => *v as i64,
        Field::UByte(v) => *v as i64,
        Field::UShort(v) => *v as i64,
        Field::UInt(v) => *v as i64,
        Field::ULong(v) => i64::try_from(*v)
            .map_err(|_| format!("`{label_name}` = {v}, beyond any class index"))?,
        other => return Err(format!("`{label_name}` is {other}, not an integer")),
    };
    Ok((bytes, label))
}

/// The class names of the `label` column from the file's `huggingface` metadata (the data set's features,
/// `{"info": {"features": {"label": {"_type": "ClassLabel", "names": [...]}}}}`); CIFAR-10's when absent.
fn class_names(
    path: &Path,
    kv: Option<&Vec<parquet::file::metadata::KeyValue>>,
) -> Result<Vec<String>> {
    let default = || CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    let Some(text) = kv
        .into_iter()
        .flatten()
        .find(|kv| kv.key == "huggingface")
        .and_then(|kv| kv.value.as_deref())
    else {
        return Ok(default());
    };
    let bad = |why: String| Error::bad_file(path, format!("`huggingface` metadata: {why}"));
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(names) = json
        .pointer("/info/features/label/names")
        .and_then(|n| n.as_array())
    else {
        return Ok(default());
    };
    let names: Vec<String> = names
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("label names are not all strings".into()))?;
    if names.is_empty() || names.len() > 256 {
        return Err(bad(format!("{} label names, expected 1–256", names.len())));
    }
    Ok(names)
}
