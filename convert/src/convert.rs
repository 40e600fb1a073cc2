//! `raven convert`: a Hugging Face Huginn checkpoint to a GGUF file (SPEC §3), streamed tensor by
//! tensor and written atomically (temporary file, then rename).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use raven_gguf::{Array, GgufWriter, Value};
use raven_quant::GgmlType;

use crate::checkpoint::{read_json_opt, Checkpoint, CkptTensor};
use raven_core::config::Family;
use raven_core::error::{RavenError, Result};
use raven_core::schema::Role;

/// The weight type a conversion targets (`--type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// Everything f32.
    F32,
    /// Matrices f16.
    F16,
    /// Matrices bf16.
    BF16,
    /// Matrices Q8_0.
    Q8_0,
    /// Matrices Q4_0, embedding Q8_0.
    Q4_0,
}

impl OutType {
    /// Parses `f32|f16|bf16|q8_0|q4_0`.
    pub fn parse(s: &str) -> Result<OutType> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => OutType::F32,
            "f16" => OutType::F16,
            "bf16" => OutType::BF16,
            "q8_0" => OutType::Q8_0,
            "q4_0" => OutType::Q4_0,
            _ => {
                return Err(RavenError::arg(
                    "--type",
                    format!("\"{s}\" is not one of f32, f16, bf16, q8_0, q4_0"),
                ))
            }
        })
    }

    /// llama.cpp's `general.file_type` number.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q8_0 => 7,
            OutType::BF16 => 32,
        }
    }

    fn matrix_type(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
            OutType::Q4_0 => GgmlType::Q4_0,
        }
    }
}

/// Progress of a conversion, for a progress bar.
pub trait Progress {
    /// Called once with the total number of input bytes.
    fn start(&mut self, _total_bytes: u64) {}
    /// Called after each tensor with the bytes done so far and the tensor's GGUF name.
    fn advance(&mut self, _done_bytes: u64, _name: &str) {}
    /// A note for the user (e.g. a type fallback).
    fn note(&mut self, _msg: &str) {}
}

/// A progress sink that prints nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What to write for one GGUF tensor: the parts of source tensors it is made of, in order.
struct Plan {
    gguf_name: String,
    /// Source tensors and the elements (row-major) each contributes: the whole tensor, the
    /// gate/up halves of `mlp.fc`, one row of `qk_bias`, or q, k and v one after the other.
    parts: Vec<(CkptTensor, std::ops::Range<usize>)>,
    /// GGUF dims, ggml order (row length first).
    dims: Vec<u64>,
    ty: GgmlType,
}

/// Summary of a finished conversion.
#[derive(Debug)]
pub struct ConvertReport {
    /// Tensors written.
    pub n_tensors: usize,
    /// Output bytes.
    pub bytes: u64,
    /// Tensors that fell back to F16 because their rows are not a multiple of 32.
    pub fallbacks: Vec<String>,
}

fn plan(ck: &Checkpoint, out: OutType, notes: &mut Vec<String>) -> Vec<Plan> {
    raven_core::schema::entries(&ck.config)
        .into_iter()
        .map(|e| {
            let parts: Vec<(CkptTensor, std::ops::Range<usize>)> = e
                .parts
                .into_iter()
                .map(|p| {
                    let t = ck
                        .tensor(&p.hf)
                        .expect("validated by Checkpoint::open")
                        .clone();
                    (t, p.elems)
                })
                .collect();
            let n: usize = parts.iter().map(|(_, r)| r.len()).sum();
            assert_eq!(n as u64, e.dims.iter().product::<u64>(), "{}", e.name);
            let mut ty = match e.role {
                Role::Vector => GgmlType::F32,
                Role::Embedding if out == OutType::Q4_0 => GgmlType::Q8_0,
                _ => out.matrix_type(),
            };
            if ty.row_bytes(e.dims[0]).is_none() {
                notes.push(format!(
                    "{}: rows of {} values are not a multiple of {}, stored as f16 instead of {ty}",
                    e.name,
                    e.dims[0],
                    ty.block_size()
                ));
                ty = GgmlType::F16;
            }
            Plan {
                gguf_name: e.name,
                parts,
                dims: e.dims,
                ty,
            }
        })
        .collect()
}

/// Deletes the temporary file unless the conversion finished.
struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn tokenizer_metadata(
    dir: &Path,
    ck: &Checkpoint,
    kv: &mut Vec<(String, Value)>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(RavenError::Checkpoint {
            path: dir.into(),
            msg: "tokenizer.json is missing (Raven stores the tokenizer inside the GGUF file)"
                .into(),
        });
    }
    let tok_json = std::fs::read_to_string(&tok_path).map_err(|e| RavenError::io(&tok_path, e))?;
    let tok = raven_text::Tokenizer::from_json(&tok_json).map_err(|e| RavenError::Json {
        path: tok_path.clone(),
        msg: format!("not a usable tokenizer: {e}"),
    })?;
    let vocab = raven_text::ggml_vocab(&tok_json).map_err(|e| RavenError::Json {
        path: tok_path.clone(),
        msg: format!("not a usable tokenizer: {e}"),
    })?;
    if vocab.tokens.len() > ck.config.n_vocab {
        return Err(RavenError::Checkpoint {
            path: tok_path,
            msg: format!(
                "tokenizer has {} tokens but the embedding has only {} rows",
                vocab.tokens.len(),
                ck.config.n_vocab
            ),
        });
    }
    let cfg_json = read_json_opt(&dir.join("config.json"))?.unwrap_or_default();
    let tcfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
    let gen = read_json_opt(&dir.join("generation_config.json"))?;
    // Special ids: generation_config.json, then config.json, then tokenizer_config.json's names.
    // Each comes with the file it was read from, for messages. Ids beyond u32 saturate so the
    // range check below reports them.
    let id_of = |key: &str, name_key: &str| -> (Vec<u32>, &'static str) {
        let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        for (src, file) in [
            (gen.as_ref(), "generation_config.json"),
            (Some(&cfg_json), "config.json"),
        ] {
            match src.and_then(|s| s.get(key)) {
                Some(serde_json::Value::Number(n)) => {
                    return (
                        n.as_u64().map(|x| vec![to_u32(x)]).unwrap_or_default(),
                        file,
                    )
                }
                Some(serde_json::Value::Array(a)) => {
                    return (
                        a.iter().filter_map(|x| x.as_u64().map(to_u32)).collect(),
                        file,
                    )
                }
                _ => {}
            }
        }
        let ids = tcfg
            .as_ref()
            .and_then(|t| t.get(name_key))
            .and_then(|n| {
                n.as_str()
                    .or_else(|| n.get("content").and_then(|c| c.as_str()))
            })
            .and_then(|s| tok.token_to_id(s))
            .map(|x| vec![x])
            .unwrap_or_default();
        (ids, "tokenizer_config.json")
    };
    let (mut bos, mut bos_src) = id_of("bos_token_id", "bos_token");
    let (mut eos, mut eos_src) = id_of("eos_token_id", "eos_token");
    let (mut pad, mut pad_src) = id_of("pad_token_id", "pad_token");
    let family = ck.config.family;
    // The retrofitted checkpoints carry Huginn-0125's special ids (65504/65505/65509: ordinary
    // words in the Llama-3 vocabulary, so generation stopped on " creek"): an id that is not a
    // special token of the tokenizer is replaced by the tokenizer's own.
    if matches!(family, Family::RecurrentLlama | Family::RecurrentOlmo2) {
        let named = |name_key: &str| -> Option<u32> {
            let n = tcfg.as_ref()?.get(name_key)?;
            tok.token_to_id(
                n.as_str()
                    .or_else(|| n.get("content").and_then(|c| c.as_str()))?,
            )
        };
        for (what, ids, src, key) in [
            ("bos", &mut bos, &mut bos_src, "bos_token"),
            ("eos", &mut eos, &mut eos_src, "eos_token"),
            ("pad", &mut pad, &mut pad_src, "pad_token"),
        ] {
            if ids.iter().all(|&id| tok.is_special(id)) {
                continue;
            }
            let bad: Vec<String> = ids
                .iter()
                .filter(|&&id| !tok.is_special(id))
                .map(|&id| match tok.id_to_token(id) {
                    Some(t) => format!("{id} ({t:?})"),
                    None => id.to_string(),
                })
                .collect();
            let fixed = named(key).filter(|&id| tok.is_special(id));
            notes.push(format!(
                "{src}: {what} id {} is not a special token of tokenizer.json (Huginn-0125's ids, inherited by the retrofitted conversion); {}",
                bad.join(", "),
                match fixed.and_then(|id| tok.id_to_token(id).map(|t| (id, t))) {
                    Some((id, t)) => format!("using {id} ({t}) from tokenizer_config.json"),
                    None => "dropped".into(),
                }
            ));
            *ids = fixed.into_iter().collect();
            *src = "tokenizer_config.json";
        }
    }
    // Ouro's base checkpoints ship bos = eos = 0 (<|endoftext|>) although their chat turns
    // are ChatML: BOS is <|im_start|> and a turn ends with <|im_end|>.
    if family == Family::Ouro {
        if let (Some(start), Some(end)) = (
            tok.token_to_id("<|im_start|>"),
            tok.token_to_id("<|im_end|>"),
        ) {
            if bos != [start] {
                notes.push(format!(
                    "{bos_src}: bos {bos:?} corrected to {start} (<|im_start|>, ChatML); <|im_end|> ({end}) added to the end-of-sequence ids"
                ));
                bos = vec![start];
            }
            if !eos.contains(&end) {
                eos.insert(0, end);
            }
        }
    }
    kv.push(("tokenizer.ggml.model".into(), Value::Str("gpt2".into())));
    kv.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(Array::Str(vocab.tokens)),
    ));
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(Array::I32(vocab.token_types)),
    ));
    kv.push((
        "tokenizer.ggml.merges".into(),
        Value::Array(Array::Str(vocab.merges)),
    ));
    for (key, ids, src) in [
        ("bos", &bos, bos_src),
        ("eos", &eos, eos_src),
        ("padding", &pad, pad_src),
    ] {
        for &id in ids.iter() {
            if id as usize >= ck.config.n_vocab {
                return Err(RavenError::Checkpoint {
                    path: dir.join(src),
                    msg: format!(
                        "{key} token id {id} is outside the vocabulary (0..{})",
                        ck.config.n_vocab
                    ),
                });
            }
        }
        if let Some(&first) = ids.first() {
            kv.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(first)));
        }
    }
    if eos.len() > 1 {
        kv.push((
            format!("{}.eos_token_ids", ck.config.family.arch()),
            Value::Array(Array::U32(eos.clone())),
        ));
    }
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    match tcfg
        .as_ref()
        .and_then(|t| t.get("chat_template"))
        .and_then(|c| c.as_str())
    {
        Some(t) => kv.push(("tokenizer.chat_template".into(), Value::Str(t.to_string()))),
        None => notes.push(
            "tokenizer_config.json has no chat_template: `raven chat` will use a plain format"
                .into(),
        ),
    }
    kv.push(("tokenizer.huggingface.json".into(), Value::Str(tok_json)));
    Ok(())
}

/// The writer knows no path: name the output file in its I/O errors (disk full, file too large).
fn write_err(out: &Path, e: raven_gguf::GgufError) -> RavenError {
    match e {
        raven_gguf::GgufError::Io { source, .. } => RavenError::io(out, source),
        e => e.into(),
    }
}

/// Converts the checkpoint in `dir` to `out` with weights of type `ty`. Writes `out` atomically:
/// on any error no file is left behind.
pub fn convert(
    dir: &Path,
    out: &Path,
    ty: OutType,
    progress: &mut dyn Progress,
) -> Result<ConvertReport> {
    // The output path first: a conversion that cannot be written fails before reading anything.
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| RavenError::arg("-o", format!("{} names no file", out.display())))?;
    if !out_dir.is_dir() {
        return Err(RavenError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the output directory does not exist",
            ),
        ));
    }
    if out.is_dir() {
        return Err(RavenError::io(
            out,
            std::io::Error::other("the output path is a directory, not a file name"),
        ));
    }
    let ck = Checkpoint::open(dir)?;
    let mut notes = Vec::new();
    let plans = plan(&ck, ty, &mut notes);

    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "huginn".into());
    let mut kv: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::Str(ck.config.family.arch().into()),
        ),
        ("general.name".into(), Value::Str(name)),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    kv.extend(ck.config.gguf_metadata());
    tokenizer_metadata(dir, &ck, &mut kv, &mut notes)?;
    for n in &notes {
        progress.note(n);
    }

    let tmp = out_dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let file = File::create(&tmp).map_err(|e| RavenError::io(&tmp, e))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file));
    for (k, v) in kv {
        w.add_kv(&k, v);
    }
    for p in &plans {
        w.add_tensor(&p.gguf_name, &p.dims, p.ty)?;
    }
    w.write_header().map_err(|e| write_err(out, e))?;

    let in_bytes = |p: &Plan| -> u64 {
        p.parts
            .iter()
            .map(|(t, r)| (r.len() * t.dtype.bitsize() / 8) as u64)
            .sum()
    };
    let total: u64 = plans.iter().map(in_bytes).sum();
    progress.start(total);
    let mut done = 0u64;
    let mut f32buf = Vec::new();
    let mut qbuf = Vec::new();
    for p in &plans {
        // Output rows of `cols` values, converted a chunk of whole rows at a time (at least one
        // row, about 1M values), so neither a 65536 × 5280 embedding nor anything else ever sits
        // in memory whole. Every part holds whole rows (q, k and v of a fused projection).
        let cols = p.dims[0] as usize;
        let row_bytes = p.ty.row_bytes(cols as u64).expect("planned") as usize;
        let chunk = ((1usize << 20) / cols).max(1);
        for (src, elems) in &p.parts {
            let n_rows = elems.len() / cols;
            let mut r = 0;
            while r < n_rows {
                let e = (r + chunk).min(n_rows);
                let first = elems.start + r * cols;
                ck.elems_f32(src, first..first + (e - r) * cols, &mut f32buf)?;
                qbuf.resize((e - r) * row_bytes, 0);
                for (s, dst) in f32buf
                    .chunks_exact(cols)
                    .zip(qbuf.chunks_exact_mut(row_bytes))
                {
                    raven_quant::quantize_row(p.ty, s, dst)?;
                }
                w.write_tensor_part(&p.gguf_name, &qbuf)
                    .map_err(|e| write_err(out, e))?;
                r = e;
            }
        }
        done += in_bytes(p);
        progress.advance(done, &p.gguf_name);
    }
    let buf = w.finish().map_err(|e| write_err(out, e))?;
    let file = buf
        .into_inner()
        .map_err(|e| RavenError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| RavenError::io(&tmp, e))?;
    drop(file);
    let bytes = std::fs::metadata(&tmp)
        .map_err(|e| RavenError::io(&tmp, e))?
        .len();
    std::fs::rename(&tmp, out).map_err(|e| RavenError::io(out, e))?;
    guard.0 = None;
    let fallbacks = notes
        .iter()
        .filter(|n| n.contains("stored as f16"))
        .cloned()
        .collect();
    Ok(ConvertReport {
        n_tensors: plans.len(),
        bytes,
        fallbacks,
    })
}
