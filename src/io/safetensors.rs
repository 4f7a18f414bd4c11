//! safetensors files (Hugging Face's weight format): 8 bytes of header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the raw little-endian data. Parsing and validation are the
//! `safetensors` crate's; here we convert to and from f32 `Tensor`s and make saving atomic.
//! We write F32 only; we read F32, F16, BF16 and F64 (rounded to f32), the dtypes real checkpoints use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Metadata, SafeTensors};
use safetensors::{Dtype, View};

use super::{read_file, write_atomic};
use crate::error::{Error, Result, fmt_shape};
use crate::tensor::{Tensor, alloc_with_capacity};

/// Named tensors in file order.
pub type NamedTensors = Vec<(String, Tensor)>;
/// A file's `__metadata__`: string keys to string values.
pub type StrMap = BTreeMap<String, String>;

/// A tensor as the writer sees it: F32 bytes, produced one tensor at a time while serializing.
struct F32View<'a> {
    t: &'a Tensor,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.t.shape()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let d = self.t.data();
        let mut bytes = Vec::with_capacity(d.len() * 4);
        for v in d.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.into()
    }
    fn data_len(&self) -> usize {
        self.t.numel() * 4
    }
}

/// The bytes of a safetensors file holding `tensors` as F32 (and `metadata` as its `__metadata__`).
/// Names must be unique. The file lists tensors sorted by name, as every safetensors writer does.
pub fn to_bytes(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if name == "__metadata__" {
            return Err(Error::value("save_safetensors", "'__metadata__' is reserved and cannot name a tensor"));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::value("save_safetensors", format!("tensor name '{name}' appears twice")));
        }
    }
    let info: Option<HashMap<String, String>> =
        if metadata.is_empty() { None } else { Some(metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect()) };
    let views = tensors.iter().map(|(name, t)| (name.as_str(), F32View { t }));
    safetensors::serialize(views, info).map_err(|e| Error::Io(format!("cannot serialize tensors: {e}")))
}

/// Save `tensors` (as F32) and string `metadata` to a safetensors file at `path`, atomically: the file is
/// written next to `path` under a temporary name, synced to disk, then renamed, so `path` always holds
/// either its old contents or the complete new file.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes = to_bytes(tensors, metadata)?;
    write_atomic(path, |f| f.write_all(&bytes))
}

/// Parse the bytes of a safetensors file; `source` names it in error messages. Tensors come back in file
/// order, converted to f32 (F16/BF16 exactly, F64 rounded to nearest).
pub fn from_bytes(bytes: &[u8], source: &str) -> Result<(NamedTensors, StrMap)> {
    let invalid = |reason: String| Error::Io(format!("{source} is not a valid safetensors file: {reason}"));
    let (header_len, meta): (usize, Metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
    // read_metadata checked that the header fits and that the data ranges tile the rest of the file exactly
    let data = bytes.get(8 + header_len..).ok_or_else(|| invalid("header longer than the file".into()))?;
    let mut out = Vec::new();
    for name in meta.offset_keys() {
        let info = meta.info(&name).ok_or_else(|| invalid(format!("tensor '{name}' has no entry")))?;
        let (start, end) = info.data_offsets;
        let raw = data.get(start..end).ok_or_else(|| invalid(format!("tensor '{name}' lies outside the file")))?;
        let values = convert(raw, info.dtype, &name, source)?;
        let t = Tensor::new(values, &info.shape).map_err(|_| {
            invalid(format!("tensor '{name}' has {} bytes for shape {}", raw.len(), fmt_shape(&info.shape)))
        })?;
        out.push((name, t));
    }
    let metadata = meta.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok((out, metadata.unwrap_or_default()))
}

/// Element bytes → f32 values.
fn convert(raw: &[u8], dtype: Dtype, name: &str, source: &str) -> Result<Vec<f32>> {
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        Dtype::F64 => 8,
        other => {
            return Err(Error::Io(format!(
                "cannot load {source}: tensor '{name}' has dtype {other:?}; only F32, F16, BF16 and F64 are supported"
            )));
        }
    };
    let mut v = alloc_with_capacity("load_safetensors", raw.len() / width)?;
    match dtype {
        Dtype::F32 => v.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F16 => {
            v.extend(raw.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()))
        }
        Dtype::BF16 => {
            v.extend(raw.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()))
        }
        _ => v.extend(
            raw.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
        ),
    }
    Ok(v)
}

/// Load every tensor of a safetensors file (as f32, in file order). A missing file, a file that is not
/// safetensors, a truncated one, or an unsupported dtype is an `Error::Io` that names the file.
pub fn load(path: &Path) -> Result<NamedTensors> {
    Ok(load_with_metadata(path)?.0)
}

/// `load` plus the file's `__metadata__` string map (empty if it has none).
pub fn load_with_metadata(path: &Path) -> Result<(NamedTensors, StrMap)> {
    let bytes = read_file(path)?;
    from_bytes(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::temp_dir;
    use crate::tensor::random::{manual_seed, randn};
    use crate::testutil::assert_close;

    /// A safetensors file built by hand from its spec (so the reader is not only checked against our writer).
    fn handmade(entries: &[(&str, &str, &[usize], Vec<u8>)], meta: Option<&str>) -> Vec<u8> {
        let mut header = String::from("{");
        if let Some(m) = meta {
            header += &format!("\"__metadata__\":{m},");
        }
        let (mut off, mut data) = (0usize, Vec::new());
        for (i, (name, dtype, shape, bytes)) in entries.iter().enumerate() {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            header += &format!(
                "{}\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
                if i > 0 { "," } else { "" },
                dims.join(","),
                off + bytes.len()
            );
            off += bytes.len();
            data.extend_from_slice(bytes);
        }
        header += "}";
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn round_trip_keeps_names_shapes_values_and_metadata() {
        manual_seed(7);
        let dir = temp_dir("st-roundtrip");
        let p = dir.join("m.safetensors");
        let tensors = vec![
            ("wte.weight".to_string(), randn(&[5, 3], 0.0, 1.0).unwrap()),
            ("h.0.ln_1.bias".to_string(), randn(&[3], 0.0, 1.0).unwrap()),
            ("scalar".to_string(), Tensor::scalar(2.5)),
            ("empty".to_string(), Tensor::zeros(&[0, 4]).unwrap()),
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string()), ("step".into(), "12".into())]);
        save(&p, &tensors, &meta).unwrap();
        let (got, got_meta) = load_with_metadata(&p).unwrap();
        assert_eq!(got_meta, meta);
        assert_eq!(got.len(), tensors.len());
        for (name, want) in &tensors {
            let t = &got.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1;
            assert_eq!(t.shape(), want.shape(), "{name}: shape");
            // f32 must round-trip exactly
            assert_close(name, &t.to_vec(), &want.to_vec(), 0.0, 0.0);
        }
        // no metadata: none written, none read back
        save(&p, &tensors[..1], &BTreeMap::new()).unwrap();
        let (got, got_meta) = load_with_metadata(&p).unwrap();
        assert!(got_meta.is_empty() && got.len() == 1);
        fs_cleanup(&dir);
    }

    fn fs_cleanup(dir: &Path) {
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_f16_bf16_f64_and_f32_from_a_handmade_file() {
        let vals = [1.0f32, -2.5, 0.333_333_34, 65504.0, 1.0e-3, 0.0];
        let f16b: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect();
        let bf16b: Vec<u8> = vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect();
        let f64b: Vec<u8> = vals.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect();
        let f32b: Vec<u8> = vals.iter().flat_map(|&v| v.to_le_bytes()).collect();
        let bytes = handmade(
            &[
                ("a", "F16", &[2, 3], f16b),
                ("b", "BF16", &[6], bf16b),
                ("c", "F64", &[3, 2], f64b),
                ("d", "F32", &[6], f32b),
            ],
            Some("{\"format\":\"pt\"}"),
        );
        let (got, meta) = from_bytes(&bytes, "handmade").unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"], "file order");
        // references computed independently: the nearest f16 / bf16 value, by the half crate's rounding
        let f16ref: Vec<f32> = vals.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let bf16ref: Vec<f32> = vals.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        for ((name, t), (want, shape)) in
            got.iter().zip([(&f16ref[..], &[2usize, 3][..]), (&bf16ref, &[6]), (&vals, &[3, 2]), (&vals, &[6])])
        {
            assert_eq!(t.shape(), shape, "{name}: shape");
            assert_close(name, &t.to_vec(), want, 0.0, 0.0);
        }
        // bf16 keeps 8 bits of mantissa: 1/3 comes back as 0.333984375
        assert_eq!(got[1].1.to_vec()[2], 0.333_984_38);
        // f16 of 65504 is the largest finite f16
        assert_eq!(got[0].1.to_vec()[3], 65504.0);
    }

    #[test]
    fn unsupported_dtype_names_the_tensor() {
        let bytes = handmade(&[("ids", "I64", &[2], vec![0u8; 16])], None);
        let err = from_bytes(&bytes, "ints.safetensors").unwrap_err();
        assert!(
            matches!(&err, Error::Io(m) if m.contains("'ids'") && m.contains("I64") && m.contains("ints.safetensors")),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_files_are_clear_io_errors() {
        manual_seed(1);
        let t = vec![("w".to_string(), randn(&[4, 4], 0.0, 1.0).unwrap())];
        let good = to_bytes(&t, &BTreeMap::new()).unwrap();
        let dir = temp_dir("st-corrupt");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated-data", good[..good.len() - 5].to_vec()),
            ("truncated-header", good[..20].to_vec()),
            ("tiny", good[..3].to_vec()),
            ("empty", vec![]),
            ("garbage", b"GGUF\x03\x00\x00\x00this is not safetensors at all".to_vec()),
            ("bad-json", {
                let mut b = good.clone();
                b[8] = b'!'; // the opening brace of the JSON header
                b
            }),
            ("extra-bytes", [good.clone(), vec![0u8; 4]].concat()),
        ];
        for (tag, bytes) in cases {
            let p = dir.join(format!("{tag}.safetensors"));
            std::fs::write(&p, &bytes).unwrap();
            let err = load(&p).unwrap_err();
            let Error::Io(msg) = &err else { panic!("{tag}: expected Error::Io, got {err:?}") };
            assert!(
                msg.contains(&p.display().to_string()) && msg.contains("is not a valid safetensors file"),
                "{tag}: unclear message: {msg}"
            );
        }
        fs_cleanup(&dir);
    }

    #[test]
    fn missing_file_has_its_own_message() {
        let err = load(Path::new("/no/such/dir/model.safetensors")).unwrap_err();
        assert!(
            matches!(&err, Error::Io(m) if m.starts_with("no such file") && m.contains("model.safetensors")),
            "{err}"
        );
    }

    #[test]
    fn failed_save_leaves_the_old_file_intact() {
        manual_seed(3);
        let dir = temp_dir("st-atomic");
        let p = dir.join("ckpt.safetensors");
        let old = vec![("w".to_string(), randn(&[3, 2], 0.0, 1.0).unwrap())];
        save(&p, &old, &BTreeMap::new()).unwrap();
        let before = std::fs::read(&p).unwrap();
        // an invalid request fails before anything is written
        let dup = vec![("a".to_string(), Tensor::scalar(1.0)), ("a".to_string(), Tensor::scalar(2.0))];
        let err = save(&p, &dup, &BTreeMap::new()).unwrap_err();
        assert!(matches!(&err, Error::Value { msg, .. } if msg.contains("'a' appears twice")), "{err}");
        let reserved = vec![("__metadata__".to_string(), Tensor::scalar(1.0))];
        assert!(save(&p, &reserved, &BTreeMap::new()).is_err());
        // a save that fails while writing (here: the target is a directory, so the final rename fails)
        let target_dir = dir.join("is_a_dir.safetensors");
        std::fs::create_dir(&target_dir).unwrap();
        std::fs::write(target_dir.join("keep"), b"x").unwrap();
        let err = save(&target_dir, &old, &BTreeMap::new()).unwrap_err();
        assert!(matches!(&err, Error::Io(m) if m.contains("is_a_dir")), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), before, "old file changed by failed saves");
        let tmp: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "temporary files left behind: {tmp:?}");
        // and the old file still loads
        let (got, _) = load_with_metadata(&p).unwrap();
        assert_eq!(got[0].1.to_vec(), old[0].1.to_vec());
        fs_cleanup(&dir);
    }

    #[test]
    fn written_file_matches_the_spec_byte_layout() {
        // header length (u64 LE) + JSON + F32 LE data, readable without our reader
        let t = vec![("x".to_string(), Tensor::new(vec![1.0, -2.0], &[2]).unwrap())];
        let b = to_bytes(&t, &BTreeMap::new()).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&b[8..8 + n]).unwrap();
        assert!(header.contains("\"x\"") && header.contains("\"F32\"") && header.contains("[0,8]"), "{header}");
        assert_eq!(&b[8 + n..], [1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
        assert_eq!(n % 8, 0, "header is padded to 8 bytes");
    }
}
