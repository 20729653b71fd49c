//! Update codecs over flat f32 vectors. Every encoding has a length that is a pure function of
//! (codec, number of values), so a decoder can reject any payload of the wrong size before
//! reading it. Decoding is exact and deterministic.
//!
//! Payload layouts (all little-endian), per chunk of `chunk` values (the last may be shorter):
//! - `F32`: the values.
//! - `Int8`: scale (f32), then one byte per value: `q = clamp(round(x/scale) + 128, 0, 255)`,
//!   `scale = 6σ/256`, `σ = ‖x‖/√(n−1)`; decoded as `(q − 128)·scale`.
//! - `TwoBit`: the four bin means (4 × f32), then 2 bits per value (4 per byte, low bits first):
//!   `q = clamp(round((x − mean)/s + 2), 0, 3)` with `s = 6σ/4`; decoded as the mean of the
//!   values that fell in bin q (the bin's nominal centre when none did).
//! - `Sign`: scale (f32) `= mean |x|`, then 1 bit per value (1 = negative, low bits first);
//!   decoded as `±scale`.
//! - `TopK`: the `k` largest-magnitude positions of the chunk (ties: lower index), ascending,
//!   packed in `⌈log₂ chunk⌉` bits each, then their `k` values in the inner value codec (one
//!   chunk). Positions not sent decode to 0.

use crate::SyncError;

/// How values are written. In configs: `f32`, `int8`, `2bit`, `sign`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ValueCodec {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "int8")]
    Int8,
    #[serde(rename = "2bit")]
    TwoBit,
    #[serde(rename = "sign")]
    Sign,
}

impl ValueCodec {
    pub const ALL: [ValueCodec; 4] =
        [ValueCodec::F32, ValueCodec::Int8, ValueCodec::TwoBit, ValueCodec::Sign];

    /// The name configs and flags use.
    pub fn name(self) -> &'static str {
        match self {
            ValueCodec::F32 => "f32",
            ValueCodec::Int8 => "int8",
            ValueCodec::TwoBit => "2bit",
            ValueCodec::Sign => "sign",
        }
    }
}

impl std::fmt::Display for ValueCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ValueCodec {
    type Err = crate::SyncError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| crate::SyncError::UnknownCodec(s.to_string()))
    }
}

/// A codec: a value codec applied per chunk, optionally after top-k selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    pub chunk: usize,
    /// `Some(k)`: send only the k largest-magnitude values of each chunk.
    pub top_k: Option<usize>,
    pub values: ValueCodec,
}

/// Largest chunk a codec may use (indices are packed in at most 16 bits).
pub const MAX_CHUNK: usize = 1 << 16;

impl Codec {
    pub const fn dense(values: ValueCodec, chunk: usize) -> Self {
        Self { chunk, top_k: None, values }
    }

    pub const fn sparse(values: ValueCodec, chunk: usize, k: usize) -> Self {
        Self { chunk, top_k: Some(k), values }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), SyncError> {
        let k_ok = self.top_k.is_none_or(|k| k >= 1 && k <= self.chunk);
        if self.chunk == 0 || self.chunk > MAX_CHUNK || !k_ok {
            return Err(SyncError::BadCodec(format!("{self:?}")));
        }
        Ok(())
    }

    fn index_bits(&self) -> usize {
        (usize::BITS - (self.chunk - 1).leading_zeros()).max(1) as usize
    }

    /// Bytes of one chunk of `n` values.
    fn chunk_bytes(&self, n: usize) -> usize {
        match self.top_k {
            None => value_bytes(self.values, n),
            Some(k) => {
                let k = k.min(n);
                (k * self.index_bits()).div_ceil(8) + value_bytes(self.values, k)
            }
        }
    }

    /// Exact payload length for `n` values.
    pub fn encoded_len(&self, n: usize) -> usize {
        let full = n / self.chunk;
        let rest = n % self.chunk;
        full * self.chunk_bytes(self.chunk) + if rest > 0 { self.chunk_bytes(rest) } else { 0 }
    }

    /// Encodes `x`.
    pub fn encode(&self, x: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len(x.len()));
        for c in x.chunks(self.chunk) {
            match self.top_k {
                None => encode_values(self.values, c, &mut out),
                Some(k) => {
                    let idx = top_k_indices(c, k.min(c.len()));
                    let mut bits = BitWriter::default();
                    for &i in &idx {
                        bits.put(i as u32, self.index_bits());
                    }
                    out.extend(bits.finish());
                    let vals: Vec<f32> = idx.iter().map(|&i| c[i]).collect();
                    encode_values(self.values, &vals, &mut out);
                }
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len(x.len()));
        out
    }

    /// Decodes a payload of `n` values into a dense vector (unsent positions are 0).
    pub fn decode(&self, payload: &[u8], n: usize) -> Result<Vec<f32>, SyncError> {
        Ok(self.decode_with_support(payload, n)?.0)
    }

    /// Decodes, also returning (for top-k codecs) the positions that were sent, ascending.
    pub fn decode_with_support(
        &self,
        payload: &[u8],
        n: usize,
    ) -> Result<(Vec<f32>, Option<Vec<u32>>), SyncError> {
        self.validate()?;
        let want = self.encoded_len(n);
        if payload.len() != want {
            return Err(SyncError::Length { what: "payload", want, got: payload.len() });
        }
        let mut out = vec![0.0f32; n];
        let mut support = self.top_k.map(|_| Vec::new());
        let mut pos = 0;
        for (ci, dst) in out.chunks_mut(self.chunk).enumerate() {
            let len = self.chunk_bytes(dst.len());
            let bytes = &payload[pos..pos + len];
            pos += len;
            match self.top_k {
                None => decode_values(self.values, bytes, dst),
                Some(k) => {
                    let k = k.min(dst.len());
                    let ib = (k * self.index_bits()).div_ceil(8);
                    let mut r = BitReader::new(&bytes[..ib]);
                    let idx: Vec<usize> = (0..k).map(|_| r.get(self.index_bits()) as usize).collect();
                    if idx.iter().any(|&i| i >= dst.len()) || idx.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(SyncError::Malformed(format!(
                            "chunk {ci}: indices out of range or not ascending"
                        )));
                    }
                    let mut vals = vec![0.0f32; k];
                    decode_values(self.values, &bytes[ib..], &mut vals);
                    for (&i, v) in idx.iter().zip(vals) {
                        dst[i] = v;
                    }
                    if let Some(s) = support.as_mut() {
                        s.extend(idx.iter().map(|&i| (ci * self.chunk + i) as u32));
                    }
                }
            }
        }
        Ok((out, support))
    }
}

fn value_bytes(v: ValueCodec, n: usize) -> usize {
    match v {
        ValueCodec::F32 => 4 * n,
        ValueCodec::Int8 => 4 + n,
        ValueCodec::TwoBit => 16 + n.div_ceil(4),
        ValueCodec::Sign => 4 + n.div_ceil(8),
    }
}

/// Positions of the `k` largest |x| (ties: lower index first), in ascending order.
pub fn top_k_indices(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    if k < x.len() {
        idx.select_nth_unstable_by(k, |&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// Standard deviation estimate `‖x − shift‖/√(n−1)` (√n when n = 1), summed in order in f64.
fn spread(x: &[f32], shift: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| f64::from(v - shift) * f64::from(v - shift)).sum();
    (ss / (x.len().max(2) - 1) as f64).sqrt() as f32
}

fn encode_values(v: ValueCodec, x: &[f32], out: &mut Vec<u8>) {
    match v {
        ValueCodec::F32 => x.iter().for_each(|f| out.extend(f.to_le_bytes())),
        ValueCodec::Int8 => {
            let scale = 6.0 * spread(x, 0.0) / 256.0;
            out.extend(scale.to_le_bytes());
            out.extend(x.iter().map(|&f| {
                if scale > 0.0 {
                    ((f / scale).round() + 128.0).clamp(0.0, 255.0) as u8
                } else {
                    128
                }
            }));
        }
        ValueCodec::TwoBit => {
            let mean = (x.iter().map(|&f| f64::from(f)).sum::<f64>() / x.len().max(1) as f64) as f32;
            let s = 6.0 * spread(x, mean) / 4.0;
            let q: Vec<u8> = x
                .iter()
                .map(|&f| if s > 0.0 { ((f - mean) / s + 2.0).round().clamp(0.0, 3.0) as u8 } else { 2 })
                .collect();
            let (mut sum, mut cnt) = ([0.0f64; 4], [0u32; 4]);
            for (&f, &b) in x.iter().zip(&q) {
                sum[b as usize] += f64::from(f);
                cnt[b as usize] += 1;
            }
            for b in 0..4 {
                let centre = if cnt[b] > 0 {
                    (sum[b] / f64::from(cnt[b])) as f32
                } else {
                    mean + (b as f32 - 2.0) * s
                };
                out.extend(centre.to_le_bytes());
            }
            let mut bits = BitWriter::default();
            q.iter().for_each(|&b| bits.put(u32::from(b), 2));
            out.extend(bits.finish());
        }
        ValueCodec::Sign => {
            let scale = (x.iter().map(|&f| f64::from(f.abs())).sum::<f64>() / x.len().max(1) as f64) as f32;
            out.extend(scale.to_le_bytes());
            let mut bits = BitWriter::default();
            x.iter().for_each(|&f| bits.put(u32::from(f.is_sign_negative()), 1));
            out.extend(bits.finish());
        }
    }
}

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

fn decode_values(v: ValueCodec, b: &[u8], dst: &mut [f32]) {
    match v {
        ValueCodec::F32 => dst.iter_mut().enumerate().for_each(|(i, d)| *d = f32_at(b, i)),
        ValueCodec::Int8 => {
            let scale = f32_at(b, 0);
            // Exactly rounded operations only: `wide`'s lanes change no bit.
            tessera_tensor::simd::wide(|| {
                dst.iter_mut().zip(&b[4..]).for_each(|(d, &q)| *d = (f32::from(q) - 128.0) * scale)
            });
        }
        ValueCodec::TwoBit => {
            let table = [f32_at(b, 0), f32_at(b, 1), f32_at(b, 2), f32_at(b, 3)];
            let mut r = BitReader::new(&b[16..]);
            dst.iter_mut().for_each(|d| *d = table[r.get(2) as usize]);
        }
        ValueCodec::Sign => {
            let scale = f32_at(b, 0);
            let mut r = BitReader::new(&b[4..]);
            dst.iter_mut().for_each(|d| *d = if r.get(1) == 1 { -scale } else { scale });
        }
    }
}

/// Packs values of a few bits each, low bits first.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: usize,
}

impl BitWriter {
    fn put(&mut self, v: u32, bits: usize) {
        self.acc |= u64::from(v) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
    acc: u64,
    n: usize,
}

impl<'a> BitReader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0, acc: 0, n: 0 }
    }

    fn get(&mut self, bits: usize) -> u32 {
        while self.n < bits {
            let byte = self.b.get(self.pos).copied().unwrap_or(0);
            self.acc |= u64::from(byte) << self.n;
            self.pos += 1;
            self.n += 8;
        }
        let v = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.n -= bits;
        v
    }
}
