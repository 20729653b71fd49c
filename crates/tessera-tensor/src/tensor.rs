//! The f32 tensor value: a shape and a shared, row-major buffer.

use std::sync::Arc;

use crate::TensorError;

/// Largest number of dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;

/// A dense, row-major f32 tensor. Cloning is cheap: the buffer is shared and copied on write.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

/// A 32-byte BLAKE3 digest, as used throughout tessera.
pub type Hash = [u8; 32];

impl Tensor {
    /// Builds a tensor from a shape and its data, checking that they agree.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self, TensorError> {
        if shape.len() > MAX_DIMS {
            return Err(TensorError::TooManyDims(shape.len()));
        }
        let n = checked_numel(shape)?;
        if n != data.len() {
            return Err(TensorError::DataLength { shape: shape.to_vec(), len: data.len() });
        }
        Ok(Self { shape: shape.to_vec(), data: Arc::new(data) })
    }

    /// Builds a tensor whose shape and data are known to agree (an internal invariant).
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape/data mismatch");
        Self { shape, data: Arc::new(data) }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, 0.0)
    }

    /// A tensor with every element equal to `v`.
    pub fn full(shape: &[usize], v: f32) -> Self {
        Self::from_parts(shape.to_vec(), vec![v; shape.iter().product()])
    }

    /// A one-element tensor of shape `[1]`.
    pub fn scalar(v: f32) -> Self {
        Self::from_parts(vec![1], vec![v])
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access to the elements; copies the buffer first if it is shared.
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// Consumes the tensor and returns its buffer (copied only if shared).
    pub fn into_data(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|a| (*a).clone())
    }

    /// The same buffer under another shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self, TensorError> {
        let n = checked_numel(shape)?;
        if n != self.numel() || shape.len() > MAX_DIMS {
            return Err(TensorError::Reshape { from: self.shape.clone(), to: shape.to_vec() });
        }
        Ok(Self { shape: shape.to_vec(), data: Arc::clone(&self.data) })
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> f32 {
        assert_eq!(self.numel(), 1, "item() on a tensor of shape {:?}", self.shape);
        self.data[0]
    }

    /// BLAKE3 of the canonical bytes: dtype tag, rank, dims (u64 LE), then the data (f32 LE).
    pub fn hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        self.hash_into(&mut h);
        *h.finalize().as_bytes()
    }

    /// Feeds the canonical bytes into an existing hasher (for state hashes over many tensors).
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        h.update(b"f32");
        h.update(&(self.shape.len() as u64).to_le_bytes());
        for &d in &self.shape {
            h.update(&(d as u64).to_le_bytes());
        }
        hash_f32s(h, &self.data);
    }
}

/// Feeds f32 values into a hasher as little-endian bytes. On a little-endian machine those
/// are the values' own bytes, handed over whole (so BLAKE3 can hash many chunks at once);
/// elsewhere they are converted in bounded chunks. The hash is the same either way.
pub fn hash_f32s(h: &mut blake3::Hasher, xs: &[f32]) {
    assert!(
        !crate::relaxed::was_enabled(),
        "tensor data hashed in a process that ran the non-deterministic fast path"
    );
    #[cfg(target_endian = "little")]
    {
        // SAFETY: f32 has no padding and every byte pattern is a valid u8; the slice covers
        // exactly the values' memory, which outlives this borrow.
        let bytes =
            unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<u8>(), std::mem::size_of_val(xs)) };
        h.update(bytes);
    }
    #[cfg(not(target_endian = "little"))]
    {
        let mut buf = [0u8; 4096];
        for chunk in xs.chunks(buf.len() / 4) {
            for (i, x) in chunk.iter().enumerate() {
                buf[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
            }
            h.update(&buf[..chunk.len() * 4]);
        }
    }
}

/// Lower-case hex of bytes (a hash or a key).
pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (either case) back into 32 bytes; `None` for anything else.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::TooLarge(shape.to_vec()))
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: Vec<f32> = self.data.iter().take(6).copied().collect();
        write!(f, "Tensor{:?} {:?}", self.shape, head)?;
        if self.numel() > 6 {
            write!(f, "…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_shape_and_bits() {
        let a = Tensor::new(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = a.reshape(&[4]).unwrap();
        assert_ne!(a.hash(), b.hash());
        let mut c = a.clone();
        c.data_mut()[3] = f32::from_bits(4.0f32.to_bits() ^ 1);
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash(), a.clone().hash());
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Tensor::new(&[2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new(&[usize::MAX, 2], vec![]).is_err());
        assert!(Tensor::zeros(&[6]).reshape(&[4]).is_err());
    }
}
