//! Named parameter tensors and the flat view the sync layer works on.
//!
//! **Flat layout (stable, documented).** Parameters are concatenated in the model's
//! declaration order (the order of [`ParamSet::names`]); each tensor contributes its elements
//! row-major, with no padding. Optimizer buffers (AdamW `m`, then `v`) use the same layout.
//! The layout's identity is [`FlatLayout::hash`]: BLAKE3 over every (name, shape) in order.

use tessera_tensor::{Hash, Tensor};

use crate::ModelError;

/// One tensor's place in the flat view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// Where every parameter lives in the flat f32 buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatLayout {
    pub entries: Vec<LayoutEntry>,
    pub total: usize,
}

impl FlatLayout {
    /// BLAKE3 over the names and shapes, in order.
    pub fn hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"tessera-layout-v1");
        for e in &self.entries {
            h.update(&(e.name.len() as u64).to_le_bytes());
            h.update(e.name.as_bytes());
            h.update(&(e.shape.len() as u64).to_le_bytes());
            for &d in &e.shape {
                h.update(&(d as u64).to_le_bytes());
            }
        }
        *h.finalize().as_bytes()
    }
}

/// An ordered list of named tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    names: Vec<String>,
    tensors: Vec<Tensor>,
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        Self { names: Vec::new(), tensors: Vec::new() }
    }

    /// Appends a named tensor. Names are unique (a duplicate is a bug in the model code).
    pub fn push(&mut self, name: impl Into<String>, t: Tensor) {
        let name = name.into();
        assert!(!self.names.contains(&name), "duplicate parameter {name}");
        self.names.push(name);
        self.tensors.push(t);
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Replaces tensor `i` with one of the same shape.
    pub fn set(&mut self, i: usize, t: Tensor) {
        assert_eq!(t.shape(), self.tensors[i].shape(), "shape change of {}", self.names[i]);
        self.tensors[i] = t;
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.names.iter().position(|n| n == name).map(|i| &self.tensors[i])
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }

    /// A set of zero tensors with the same names and shapes.
    pub fn zeros_like(&self) -> Self {
        Self {
            names: self.names.clone(),
            tensors: self.tensors.iter().map(|t| Tensor::zeros(t.shape())).collect(),
        }
    }

    /// The flat layout of this set.
    pub fn layout(&self) -> FlatLayout {
        let mut offset = 0;
        let entries = self
            .names
            .iter()
            .zip(&self.tensors)
            .map(|(name, t)| {
                let e = LayoutEntry { name: name.clone(), shape: t.shape().to_vec(), offset, len: t.numel() };
                offset += t.numel();
                e
            })
            .collect();
        FlatLayout { entries, total: offset }
    }

    /// All values concatenated in layout order.
    pub fn to_flat(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.numel());
        for t in &self.tensors {
            out.extend_from_slice(t.data());
        }
        out
    }

    /// All values concatenated in layout order into `out`, reusing its allocation.
    pub fn write_flat(&self, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(self.numel());
        for t in &self.tensors {
            out.extend_from_slice(t.data());
        }
    }

    /// Overwrites every tensor from a flat buffer in layout order.
    pub fn load_flat(&mut self, flat: &[f32]) -> Result<(), ModelError> {
        if flat.len() != self.numel() {
            return Err(ModelError::FlatLength { want: self.numel(), got: flat.len() });
        }
        let mut off = 0;
        for t in &mut self.tensors {
            let n = t.numel();
            t.data_mut().copy_from_slice(&flat[off..off + n]);
            off += n;
        }
        Ok(())
    }

    /// Feeds every tensor's canonical bytes, in order, into `h`.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        for t in &self.tensors {
            t.hash_into(h);
        }
    }
}

impl Default for ParamSet {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_round_trip_and_layout() {
        let mut p = ParamSet::new();
        p.push("a", Tensor::new(&[2], vec![1.0, 2.0]).unwrap());
        p.push("b", Tensor::new(&[1, 3], vec![3.0, 4.0, 5.0]).unwrap());
        let l = p.layout();
        assert_eq!(l.total, 5);
        assert_eq!(l.entries[1].offset, 2);
        let flat = p.to_flat();
        assert_eq!(flat, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut q = p.zeros_like();
        q.load_flat(&flat).unwrap();
        assert_eq!(p, q);
        assert!(q.load_flat(&flat[..4]).is_err());
        let mut r = ParamSet::new();
        r.push("a", Tensor::zeros(&[2]));
        r.push("b", Tensor::zeros(&[3]));
        assert_ne!(r.layout().hash(), l.hash(), "shape is part of the layout");
    }
}
