//! Reduced SVD of the selected weights, cached on disk.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use bitnet_dequant::io::{StDtype, StEntry, StreamingSafetensors};
use lm::CausalLm;
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

const CACHE_FORMAT: &str = "svf-decomposition";
const CACHE_VERSION: &str = "1";

/// Which linear layers get a z-vector: those whose name contains one of the patterns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// Substrings of layer names (`model.layers.3.mlp.up_proj`).
    pub patterns: Vec<String>,
}

impl Selection {
    /// The MLP projections (the reference code's choice; the default).
    pub fn mlp() -> Self {
        Self::new(&["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
    }

    /// The MLP projections and the attention q, k, v, o projections.
    pub fn mlp_and_attention() -> Self {
        Self::new(&[
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
        ])
    }

    /// Any patterns.
    pub fn new(patterns: &[&str]) -> Self {
        Self {
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    /// Whether a layer is selected.
    pub fn matches(&self, layer: &str) -> bool {
        self.patterns.iter().any(|p| layer.contains(p.as_str()))
    }

    fn key(&self) -> String {
        self.patterns.join(",")
    }
}

/// `W = U diag(s) V^T` of one matrix `[out, in]`: `u` `[out, k]`, `s` `[k]`, `v`
/// `[in, k]`, `k = min(out, in)`, in f32 on the CPU.
pub struct Factors {
    /// The layer's Hugging Face name.
    pub name: String,
    /// Left singular vectors.
    pub u: Tensor,
    /// Singular values, descending.
    pub s: Tensor,
    /// Right singular vectors (not transposed).
    pub v: Tensor,
}

impl Factors {
    /// Output features.
    pub fn rows(&self) -> usize {
        self.u.size()[0] as usize
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.v.size()[0] as usize
    }
    /// Number of singular values (the length of its z-vector).
    pub fn rank(&self) -> usize {
        self.s.size()[0] as usize
    }
}

/// The decomposition of every selected matrix of a model.
pub struct Decomposition {
    factors: Vec<Factors>,
    base_hash: String,
    selection: Selection,
}

/// FNV-1a over 8-byte words: stable across platforms and toolchains (unlike std's
/// hasher), fast enough to fingerprint a model's weights every run.
struct Fingerprint(u64);

impl Fingerprint {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn selected_weights(model: &mut CausalLm, selection: &Selection) -> Vec<(String, Tensor)> {
    model
        .linear_layers_mut()
        .into_iter()
        .filter(|layer| selection.matches(&layer.name))
        .map(|layer| (layer.name.clone(), layer.weight.shallow_clone()))
        .collect()
}

/// The fingerprint of the selected weights (names, shapes and f32 values).
pub(crate) fn weights_hash(weights: &[(String, Tensor)], selection: &Selection) -> Result<String> {
    let mut fingerprint = Fingerprint::new();
    fingerprint.add(selection.key().as_bytes());
    for (name, weight) in weights {
        fingerprint.add(name.as_bytes());
        for dim in weight.size() {
            fingerprint.add(&dim.to_le_bytes());
        }
        let values = Vec::<f32>::try_from(
            weight
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1),
        )?;
        for chunk in values.chunks(1 << 16) {
            // SAFETY: f32 slices are valid byte slices of four times the length.
            let bytes =
                unsafe { std::slice::from_raw_parts(chunk.as_ptr().cast::<u8>(), chunk.len() * 4) };
            fingerprint.add(bytes);
        }
    }
    Ok(format!("{:016x}", fingerprint.0))
}

impl Decomposition {
    /// Decomposes the selected weights of `model` (reduced SVD, computed in f64 when
    /// `double` for accuracy, else f32, on the model's device; factors kept in f32 on
    /// the CPU).
    pub fn compute(model: &mut CausalLm, selection: &Selection, double: bool) -> Result<Self> {
        let weights = selected_weights(model, selection);
        if weights.is_empty() {
            return Err(Error::Invalid(format!(
                "the selection {:?} matches no linear layer of the model",
                selection.patterns
            )));
        }
        let base_hash = weights_hash(&weights, selection)?;
        let kind = if double { Kind::Double } else { Kind::Float };
        let interactive = std::io::stderr().is_terminal();
        let mut factors = Vec::with_capacity(weights.len());
        for (index, (name, weight)) in weights.iter().enumerate() {
            if interactive {
                eprint!(
                    "\rsvf: decomposing {}/{} {name}        ",
                    index + 1,
                    weights.len()
                );
            }
            // The reduced SVD; `svd` returns V itself (not V^T), as the reference code uses.
            let (u, s, v) = tch::no_grad(|| weight.to_kind(kind).svd(true, true));
            let to_cpu = |t: Tensor| t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
            factors.push(Factors {
                name: name.clone(),
                u: to_cpu(u),
                s: to_cpu(s),
                v: to_cpu(v),
            });
        }
        if interactive {
            eprintln!();
        }
        Ok(Self {
            factors,
            base_hash,
            selection: selection.clone(),
        })
    }

    /// Loads the decomposition from `cache` when it was made from these very weights and
    /// this selection; otherwise computes it (f32) and writes the cache atomically.
    pub fn load_or_compute(
        model: &mut CausalLm,
        selection: &Selection,
        cache: &Path,
    ) -> Result<Self> {
        let weights = selected_weights(model, selection);
        let hash = weights_hash(&weights, selection)?;
        if cache.is_file() {
            match Self::load(cache) {
                Ok(found) if found.base_hash == hash && found.selection == *selection => {
                    return Ok(found);
                }
                _ => {}
            }
        }
        let computed = Self::compute(model, selection, false)?;
        computed.save(cache)?;
        Ok(computed)
    }

    /// Writes the factors and their key (weights hash, selection) as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut entries = Vec::new();
        for f in &self.factors {
            for (suffix, t) in [("U", &f.u), ("S", &f.s), ("V", &f.v)] {
                entries.push(StEntry {
                    name: format!("{}.{suffix}", f.name),
                    dtype: StDtype::F32,
                    shape: t.size().iter().map(|&d| d as usize).collect(),
                });
            }
        }
        let metadata = BTreeMap::from([
            ("format".to_owned(), CACHE_FORMAT.to_owned()),
            ("version".to_owned(), CACHE_VERSION.to_owned()),
            ("base_hash".to_owned(), self.base_hash.clone()),
            (
                "selection".to_owned(),
                serde_json::to_string(&self.selection).unwrap_or_default(),
            ),
        ]);
        let file_error = |e: bitnet_dequant::Error| Error::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut writer =
            StreamingSafetensors::create(path, entries, &metadata).map_err(file_error)?;
        for f in &self.factors {
            for (suffix, t) in [("U", &f.u), ("S", &f.s), ("V", &f.v)] {
                let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
                writer
                    .write_tensor(
                        &format!("{}.{suffix}", f.name),
                        bitnet_dequant::io::f32_bytes(&values),
                    )
                    .map_err(file_error)?;
            }
        }
        writer.finish().map_err(file_error)
    }

    /// Reads a decomposition written by [`Decomposition::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let metadata = crate::FileMetadata::read(path, CACHE_FORMAT, CACHE_VERSION)?;
        let selection: Selection = metadata.parse("selection")?;
        let tensors: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let mut names: Vec<&String> = tensors.keys().filter(|k| k.ends_with(".S")).collect();
        // Keep the model's layer order: sort by layer index, then by name.
        names.sort_by_key(|name| layer_order(name));
        let mut factors = Vec::with_capacity(names.len());
        for name in names {
            let base = name.trim_end_matches(".S").to_owned();
            let take = |suffix: &str| {
                tensors
                    .get(&format!("{base}.{suffix}"))
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| metadata.error(format!("tensor `{base}.{suffix}` is missing")))
            };
            factors.push(Factors {
                u: take("U")?,
                s: take("S")?,
                v: take("V")?,
                name: base,
            });
        }
        Ok(Self {
            factors,
            base_hash: metadata.field("base_hash")?,
            selection,
        })
    }

    /// The factors, in the model's layer order.
    pub fn factors(&self) -> &[Factors] {
        &self.factors
    }

    /// The fingerprint of the weights it was computed from.
    pub fn base_hash(&self) -> &str {
        &self.base_hash
    }

    /// The selection it covers.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }
}

/// Sort key putting `model.layers.10.x` after `model.layers.9.x`, in projection order.
pub(crate) fn layer_order(name: &str) -> (usize, usize, String) {
    let layer = name
        .split('.')
        .skip_while(|p| *p != "layers")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(usize::MAX);
    const ORDER: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let projection = ORDER
        .iter()
        .position(|p| name.contains(p))
        .unwrap_or(ORDER.len());
    (layer, projection, name.to_owned())
}
