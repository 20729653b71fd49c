//! The encoded-update wire format and its validating decoder.
//!
//! ```text
//! magic "TSU1" | version u8 | algorithm u8 | value codec u8 | top-k flag u8 | chunk u32 | k u32
//! | layout hash [32] | round u64 | values n u64 | payload length u64 | payload
//! ```
//! All integers little-endian; the header is [`HEADER_BYTES`] long. The decoder checks, before
//! allocating or decoding, that every field is known, that the layout hash, algorithm, codec
//! and value count are the ones expected, and that the payload length is exactly what the
//! codec gives for `n`.

use tessera_tensor::Hash;

use crate::{Codec, SyncError, ValueCodec};

pub const MAGIC: &[u8; 4] = b"TSU1";
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 4 + 4 + 8 + 32 + 8 + 8 + 8;
/// Most values one update may carry.
pub const MAX_UPDATE_VALUES: u64 = 1 << 32;

/// Which algorithm produced an update. In configs: `ddp`, `diloco`, `noloco`, `sparseloco`,
/// `demo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Ddp = 1,
    DiLoCo = 2,
    NoLoCo = 3,
    SparseLoCo = 4,
    DeMo = 5,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] =
        [Algorithm::Ddp, Algorithm::DiLoCo, Algorithm::NoLoCo, Algorithm::SparseLoCo, Algorithm::DeMo];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ddp => "ddp",
            Algorithm::DiLoCo => "diloco",
            Algorithm::NoLoCo => "noloco",
            Algorithm::SparseLoCo => "sparseloco",
            Algorithm::DeMo => "demo",
        }
    }

    pub fn parse(s: &str) -> Result<Self, SyncError> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| SyncError::UnknownAlgorithm(s.to_string()))
    }

    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| *a as u8 == v)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = SyncError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn value_code(v: ValueCodec) -> u8 {
    match v {
        ValueCodec::F32 => 1,
        ValueCodec::Int8 => 2,
        ValueCodec::TwoBit => 3,
        ValueCodec::Sign => 4,
    }
}

fn value_from(v: u8) -> Option<ValueCodec> {
    [ValueCodec::F32, ValueCodec::Int8, ValueCodec::TwoBit, ValueCodec::Sign]
        .into_iter()
        .find(|&c| value_code(c) == v)
}

/// The fixed fields of an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateHeader {
    pub algorithm: Algorithm,
    pub codec: Codec,
    pub layout_hash: Hash,
    pub round: u64,
    pub n: u64,
}

/// What a receiver expects of an update.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub layout_hash: Hash,
    pub n: usize,
    /// The run's algorithm, which the header must name.
    pub algorithm: Algorithm,
    /// The codec the header must name (`None`: whichever it names, e.g. for tools).
    pub codec: Option<Codec>,
    /// Largest L2 norm accepted for the decoded values (`None`: no bound).
    pub max_norm: Option<f32>,
}

/// A decoded, validated update: dense values, and for top-k codecs the positions sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub header: UpdateHeader,
    pub values: Vec<f32>,
    pub support: Option<Vec<u32>>,
    /// The values' [`crate::l2_norm`], when it was computed to check the bound.
    pub norm: Option<f64>,
}

/// Encodes `values` with `codec` and frames them (see [`frame_update`]).
pub fn encode_update(
    algorithm: Algorithm,
    codec: Codec,
    layout_hash: Hash,
    round: u64,
    values: &[f32],
) -> Vec<u8> {
    frame_update(algorithm, codec, layout_hash, round, values.len(), &codec.encode(values))
}

/// Frames an already encoded payload of `n` values into wire bytes.
pub fn frame_update(
    algorithm: Algorithm,
    codec: Codec,
    layout_hash: Hash,
    round: u64,
    n: usize,
    payload: &[u8],
) -> Vec<u8> {
    debug_assert_eq!(payload.len(), codec.encoded_len(n));
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend(MAGIC);
    out.extend([VERSION, algorithm as u8, value_code(codec.values), u8::from(codec.top_k.is_some())]);
    out.extend((codec.chunk as u32).to_le_bytes());
    out.extend((codec.top_k.unwrap_or(0) as u32).to_le_bytes());
    out.extend(layout_hash);
    out.extend(round.to_le_bytes());
    out.extend((n as u64).to_le_bytes());
    out.extend((payload.len() as u64).to_le_bytes());
    out.extend(payload);
    out
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Parses and checks the header alone.
pub fn decode_header(b: &[u8]) -> Result<UpdateHeader, SyncError> {
    if b.len() < HEADER_BYTES {
        return Err(SyncError::Length { what: "update header", want: HEADER_BYTES, got: b.len() });
    }
    if &b[..4] != MAGIC || b[4] != VERSION {
        return Err(SyncError::Malformed("bad magic or version".into()));
    }
    let algorithm =
        Algorithm::from_u8(b[5]).ok_or_else(|| SyncError::Malformed(format!("algorithm {}", b[5])))?;
    let values = value_from(b[6]).ok_or_else(|| SyncError::Malformed(format!("value codec {}", b[6])))?;
    let top_k = match b[7] {
        0 => None,
        1 => Some(u32_at(b, 12) as usize),
        f => return Err(SyncError::Malformed(format!("top-k flag {f}"))),
    };
    let codec = Codec { chunk: u32_at(b, 8) as usize, top_k, values };
    codec.validate()?;
    let mut layout_hash = [0u8; 32];
    layout_hash.copy_from_slice(&b[16..48]);
    let n = u64_at(b, 56);
    if n > MAX_UPDATE_VALUES {
        return Err(SyncError::Malformed(format!("{n} values")));
    }
    Ok(UpdateHeader { algorithm, codec, layout_hash, round: u64_at(b, 48), n })
}

/// Decodes and validates wire bytes against what the receiver expects.
pub fn decode_update(b: &[u8], want: &Expected) -> Result<Decoded, SyncError> {
    let header = decode_header(b)?;
    if header.layout_hash != want.layout_hash {
        return Err(SyncError::Layout);
    }
    if header.algorithm != want.algorithm {
        return Err(SyncError::Malformed(format!(
            "an update of {}, not {}",
            header.algorithm, want.algorithm
        )));
    }
    if want.codec.is_some_and(|c| c != header.codec) {
        return Err(SyncError::Malformed(format!(
            "codec {:?}, not the run's {:?}",
            header.codec, want.codec
        )));
    }
    if header.n != want.n as u64 {
        return Err(SyncError::Length { what: "values", want: want.n, got: header.n as usize });
    }
    let expect_payload = header.codec.encoded_len(want.n);
    let declared = u64_at(b, 64);
    if declared != expect_payload as u64 || b.len() != HEADER_BYTES + expect_payload {
        return Err(SyncError::Length {
            what: "payload",
            want: expect_payload,
            got: b.len().saturating_sub(HEADER_BYTES),
        });
    }
    let (values, support) = header.codec.decode_with_support(&b[HEADER_BYTES..], want.n)?;
    // The largest magnitude's bits over all values first (a scan that vectorizes, where one
    // that stops early does not), the position only for a refusal.
    let worst =
        tessera_tensor::simd::wide(|| values.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF)));
    if worst >= f32::INFINITY.to_bits() {
        let index = values.iter().position(|v| !v.is_finite()).unwrap_or_default();
        return Err(SyncError::NonFinite { index });
    }
    let mut norm = None;
    if let Some(bound) = want.max_norm {
        let n = crate::l2_norm(&values);
        if n > f64::from(bound) {
            return Err(SyncError::NormTooLarge { norm: n, bound });
        }
        norm = Some(n);
    }
    Ok(Decoded { header, values, support, norm })
}
