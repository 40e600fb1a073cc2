//! Reading a Hugging Face Huginn checkpoint: `config.json` plus bf16/f16/f32 safetensors shards,
//! with or without `model.safetensors.index.json`.
//!
//! Only the shards' headers are mapped; tensor data is read on demand with positioned reads
//! ([`Checkpoint::elems_f32`]), so converting a 7 GB checkpoint keeps a few megabytes resident
//! instead of every page it has touched.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use raven_core::config::{Config, Family};
use raven_core::error::{RavenError, Result};

/// One tensor of a checkpoint: where it lives and what it is.
#[derive(Clone, Debug)]
pub struct CkptTensor {
    /// Index of the shard in [`Checkpoint::shards`].
    pub shard: usize,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Byte range inside the shard file.
    pub range: std::ops::Range<u64>,
}

/// A validated Hugging Face checkpoint whose tensors are read on demand.
pub struct Checkpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Hyperparameters from config.json.
    pub config: Config,
    /// Shard file paths.
    pub shards: Vec<PathBuf>,
    files: Vec<File>,
    tensors: BTreeMap<String, CkptTensor>,
}

/// Reads `buf.len()` bytes of `f` at offset `off` without moving a shared cursor.
fn read_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
    }
    #[cfg(windows)]
    {
        let (mut done, mut off) = (0usize, off);
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(f, &mut buf[done..], off)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
            off += n as u64;
        }
        Ok(())
    }
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> RavenError {
    RavenError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Which shard files a directory's checkpoint consists of.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| RavenError::io(&index, e))?;
        let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| RavenError::Json {
            path: index.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let map = j
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| RavenError::Json {
                path: index.clone(),
                msg: "no \"weight_map\" object".into(),
            })?;
        let mut files: Vec<String> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| RavenError::Json {
                path: index.clone(),
                msg: format!("weight_map entry for {name} is not a file name"),
            })?;
            if f.contains('/') || f.contains('\\') || f.contains("..") {
                return Err(RavenError::Json {
                    path: index.clone(),
                    msg: format!("weight_map names {f:?}, which is not a plain file name in the checkpoint directory"),
                });
            }
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let p = dir.join(&f);
            if !p.is_file() {
                return Err(ckpt_err(
                    dir,
                    format!("shard {f} is listed in model.safetensors.index.json but missing"),
                ));
            }
            out.push(p);
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| RavenError::io(dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model") && n.ends_with(".safetensors"))
        })
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(ckpt_err(
            dir,
            "no model*.safetensors shards and no model.safetensors.index.json found",
        ));
    }
    check_numbered_shards(dir, &out)?;
    Ok(out)
}

/// `model-00002-of-00003.safetensors` → (2, 3, width of the numbers).
fn shard_number(name: &str) -> Option<(usize, usize, usize)> {
    let (n, m) = name
        .strip_prefix("model-")?
        .strip_suffix(".safetensors")?
        .split_once("-of-")?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(n) || !all_digits(m) {
        return None;
    }
    Some((n.parse().ok()?, m.parse().ok()?, n.len()))
}

/// Without an index, shards named `model-N-of-M` still say how many there must be: name the
/// missing one rather than the tensors it held.
fn check_numbered_shards(dir: &Path, files: &[PathBuf]) -> Result<()> {
    let names: Vec<&str> = files
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
        .collect();
    let numbered: Vec<(&str, (usize, usize, usize))> = names
        .iter()
        .filter_map(|n| shard_number(n).map(|x| (*n, x)))
        .collect();
    let Some(&(first, (_, total, width))) = numbered.first() else {
        return Ok(());
    };
    if let Some((other, (_, m, _))) = numbered.iter().find(|(_, (_, m, _))| *m != total) {
        return Err(ckpt_err(
            dir,
            format!(
                "shard names disagree on the shard count: {first} says {total}, {other} says {m}"
            ),
        ));
    }
    if let Some((bad, (n, _, _))) = numbered.iter().find(|(_, (n, _, _))| *n == 0 || *n > total) {
        return Err(ckpt_err(
            dir,
            format!("shard {bad} is number {n} of {total}: shards count from 1 to {total}"),
        ));
    }
    if total > 100_000 {
        return Err(ckpt_err(
            dir,
            format!("{first} claims {total} shards, more than Raven accepts (100000)"),
        ));
    }
    for i in 1..=total {
        let want = format!("model-{i:0width$}-of-{total:0width$}.safetensors");
        if !names.contains(&want.as_str()) {
            return Err(ckpt_err(
                dir,
                format!(
                    "shard {want} is missing (there is no model.safetensors.index.json, and {first} says there are {total} shards)"
                ),
            ));
        }
    }
    Ok(())
}

impl Checkpoint {
    /// Opens and validates the checkpoint in `dir` against its config.json: every tensor the model
    /// needs is present with the right shape and a float type.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(ckpt_err(
                dir,
                "not a directory (expected a Hugging Face checkpoint directory)",
            ));
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(ckpt_err(dir, "config.json is missing"));
        }
        let config = Config::from_hf_json(&cfg_path)?;
        let shards = shard_files(dir)?;
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for (si, p) in shards.iter().enumerate() {
            let f = File::open(p).map_err(|e| RavenError::io(p, e))?;
            // The header is parsed from a mapping (only its first pages are touched, and the
            // mapping is dropped at the end of this iteration); the data is read with
            // positioned reads later, so it never stays resident.
            // SAFETY: the mapping is read-only; a file changed underneath us while mapped is
            // documented as unsupported (README, "Memory mapping").
            let map = unsafe { Mmap::map(&f) }.map_err(|e| RavenError::io(p, e))?;
            let (n, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| ckpt_err(p, format!("not a valid safetensors file: {e}")))?;
            let base = 8 + n as u64;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                let t = CkptTensor {
                    shard: si,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: base + a as u64..base + b as u64,
                };
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(ckpt_err(
                        p,
                        format!("tensor {name} appears in more than one shard"),
                    ));
                }
            }
            files.push(f);
        }
        let mut config = config;
        // The OLMo-2 variant's config is the Llama variant's; its q/k norms tell them apart.
        if config.family == Family::RecurrentLlama
            && tensors.keys().any(|k| k.ends_with(".attn.q_norm.weight"))
        {
            config.family = Family::RecurrentOlmo2;
        }
        let ck = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
            files,
            tensors,
        };
        ck.validate()?;
        Ok(ck)
    }

    /// The tensors the model needs, HF name → expected shape.
    pub fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
        raven_core::schema::hf_tensors(c)
    }

    fn validate(&self) -> Result<()> {
        let mut missing = Vec::new();
        for (name, shape) in Self::expected_tensors(&self.config) {
            match self.tensors.get(&name) {
                None => missing.push(name),
                Some(t) => {
                    if t.shape != shape {
                        return Err(ckpt_err(
                            &self.shards[t.shard],
                            format!(
                                "tensor {name} has shape {:?}, config.json implies {:?}",
                                t.shape, shape
                            ),
                        ));
                    }
                    if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
                        return Err(ckpt_err(
                            &self.shards[t.shard],
                            format!("tensor {name} has type {:?}; Raven converts bf16, f16 and f32 weights", t.dtype),
                        ));
                    }
                }
            }
        }
        if !missing.is_empty() {
            let n = missing.len();
            missing.truncate(5);
            return Err(ckpt_err(
                &self.dir,
                format!(
                    "{n} tensor(s) missing, e.g. {} (is a shard missing, or does config.json describe another model?)",
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Looks up a tensor.
    pub fn tensor(&self, name: &str) -> Option<&CkptTensor> {
        self.tensors.get(name)
    }

    /// Names of tensors present in the files.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Number of elements of a tensor.
    pub fn n_elems(t: &CkptTensor) -> usize {
        t.shape.iter().product()
    }

    /// Elements `elems` of a tensor (row-major, PyTorch order), converted to f32 into `out`.
    /// Reads only those bytes from the shard: nothing of the file stays mapped or resident.
    pub fn elems_f32(
        &self,
        t: &CkptTensor,
        elems: std::ops::Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let es = (t.dtype.bitsize() / 8) as u64;
        let path = &self.shards[t.shard];
        if elems.end > Self::n_elems(t) || elems.start > elems.end {
            return Err(ckpt_err(
                path,
                format!(
                    "elements {elems:?} requested of a tensor of {} elements",
                    Self::n_elems(t)
                ),
            ));
        }
        let mut bytes = vec![0u8; elems.len() * es as usize];
        read_at(
            &self.files[t.shard],
            &mut bytes,
            t.range.start + elems.start as u64 * es,
        )
        .map_err(|e| RavenError::io(path, e))?;
        out.clear();
        out.reserve(elems.len());
        match t.dtype {
            Dtype::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            ),
            Dtype::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            ),
            _ => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
        Ok(())
    }

    /// A whole tensor as f32.
    pub fn to_f32(&self, t: &CkptTensor) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        self.elems_f32(t, 0..Self::n_elems(t), &mut v)?;
        Ok(v)
    }
}

/// Reads an optional JSON file of the checkpoint directory.
pub fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| RavenError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RavenError::Json {
            path: path.into(),
            msg: format!("not valid JSON: {e}"),
        })
}
