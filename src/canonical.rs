//! Deterministic bytes for safetensors files. The `safetensors` crate takes the metadata as a
//! `HashMap`, whose order differs from process to process, so two runs that end in the same
//! tensors would write files that differ in their header. [`safetensors_bytes`] rewrites the
//! header with its keys sorted (tensor offsets are relative to the data, so they stay valid): the
//! same run gives the same file, byte for byte.

use crate::error::{Result, RiglError};

/// `bytes` of a serialized safetensors file with the JSON header's keys sorted, padded with
/// spaces to a multiple of 8 bytes as the format's writer does.
pub fn safetensors_bytes(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |m: &str| RiglError::invalid(format!("safetensors header: {m}"));
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its length field"))?;
    let n = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad("length"))?;
    let header = bytes
        .get(8..8 + n)
        .ok_or_else(|| bad("shorter than its length"))?;
    // serde_json's map is ordered by key (no `preserve_order` feature), so this sorts the keys
    // at every level.
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let mut text = serde_json::to_vec(&value).map_err(|e| bad(&e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};

    #[test]
    fn the_header_is_sorted_and_the_file_still_reads() {
        let data: Vec<u8> = (0..24).collect();
        let meta: HashMap<String, String> = (0..20)
            .map(|i| (format!("key{i:02}"), format!("value {i}")))
            .collect();
        let views = vec![
            (
                "b".to_string(),
                TensorView::new(Dtype::F32, vec![2], &data[..8]).unwrap(),
            ),
            (
                "a".to_string(),
                TensorView::new(Dtype::U8, vec![16], &data[8..]).unwrap(),
            ),
        ];
        let raw = safetensors::serialize(views, Some(meta.clone())).unwrap();
        let out = super::safetensors_bytes(raw).unwrap();
        let n = u64::from_le_bytes(out[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&out[8..8 + n]).unwrap();
        let keys: Vec<usize> = (0..20)
            .map(|i| header.find(&format!("key{i:02}")).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{header}");
        let (_, read_meta) = SafeTensors::read_metadata(&out).unwrap();
        assert_eq!(read_meta.metadata().as_ref(), Some(&meta));
        let st = SafeTensors::deserialize(&out).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &data[8..]);
        assert_eq!(st.tensor("b").unwrap().data(), &data[..8]);
    }
}
