//! The decoder-only transformer shared by Llama, Qwen2, Mistral and BitNet.
//!
//! Weights come from a Hugging Face checkpoint through `bitnet-dequant`, so a BitNet
//! checkpoint (packed or online) loads exactly like a float one: its linear layers get
//! dequantized weights (`code * scale`) and are marked BitLinear, which quantizes their
//! input activations to 8 bits per token (absmax), as transformers' BitNet layers do.
//! That quantization can be switched off to get the plain float forward (R2's
//! comparison).

use std::path::{Path, PathBuf};

use bitnet_dequant::Checkpoint;
use tch::{Device, Kind, Tensor};

use crate::config::{Activation, Architecture, ModelConfig};
use crate::{Error, Result};

/// Replaces a linear layer's forward (SVF supplies a factorized forward or merged
/// weights through this).
pub trait LinearAdapter: Send {
    /// The layer's output for input `x` (already activation-quantized for BitLinear).
    fn forward(&self, x: &Tensor, layer: &Linear) -> Tensor;
}

/// A linear layer: `y = x W^T + b`, optionally BitLinear (8-bit absmax activations).
pub struct Linear {
    /// Its Hugging Face name, e.g. `model.layers.3.mlp.up_proj`.
    pub name: String,
    /// `[out_features, in_features]`. Replacing it or writing into it is always safe. A
    /// layer loaded from GGUF blocks on the CPU also keeps those blocks
    /// ([`Linear::packed_bytes`]) and computes from them while they decode to this
    /// tensor: checked at load, and again at the next use after the tensor was replaced
    /// or written in place (libtorch's version counter; writes through raw pointers are
    /// not seen). A model loaded
    /// with [`LoadOptions::packed_only`] keeps no f32 copy of such a layer: its `weight`
    /// is then empty (0 elements) and [`Linear::dense_weight`] decodes the blocks.
    pub weight: Tensor,
    /// `[out_features]`, if any.
    pub bias: Option<Tensor>,
    /// Whether this is a BitLinear layer (its input is quantized when the model's
    /// activation quantization is on).
    pub bitlinear: bool,
    adapter: Option<Box<dyn LinearAdapter>>,
    packed: Option<Packed>,
}

impl Linear {
    /// Installs an adapter that replaces the forward; returns the previous one.
    pub fn set_adapter(
        &mut self,
        adapter: Option<Box<dyn LinearAdapter>>,
    ) -> Option<Box<dyn LinearAdapter>> {
        std::mem::replace(&mut self.adapter, adapter)
    }

    fn forward(&self, x: &Tensor, quantization: Quantization) -> Tensor {
        let input = if self.bitlinear && quantization.activations {
            quantize_activations(x)
        } else {
            x.shallow_clone()
        };
        match &self.adapter {
            Some(adapter) => adapter.forward(&input, self),
            None if self.bitlinear && quantization.weights => {
                crate::cpu::linear(&input, &ternarize_weights(&self.weight), self.bias.as_ref())
            }
            None => packed_or_f32(
                &input,
                &self.weight,
                self.packed.as_ref(),
                self.bias.as_ref(),
            ),
        }
    }

    /// Bytes of the checkpoint's blocks this layer keeps beside `weight` (0 when none).
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.matrix.byte_len())
    }

    /// The weight as an f32 tensor: `weight` itself, or, for a layer whose blocks are its
    /// only copy ([`LoadOptions::packed_only`]), the blocks decoded (a new tensor).
    pub fn dense_weight(&self) -> Tensor {
        dense(&self.weight, self.packed.as_ref())
    }
}

/// `weight`, or the blocks decoded where they are the only copy (`weight` empty).
fn dense(weight: &Tensor, packed: Option<&Packed>) -> Tensor {
    match packed {
        Some(packed) if weight.numel() == 0 && packed.is_sole() => packed.decoded(),
        _ => weight.shallow_clone(),
    }
}

/// `x W^T + b` from the packed blocks where they stand for `weight`, else from `weight`.
fn packed_or_f32(
    x: &Tensor,
    weight: &Tensor,
    packed: Option<&Packed>,
    bias: Option<&Tensor>,
) -> Tensor {
    // Many rows of input make the product compute-bound: reading fewer bytes no longer
    // pays for decoding them, so the f32 weights serve where there are any.
    let rows =
        x.numel() / usize::try_from(x.size().last().copied().unwrap_or(1).max(1)).unwrap_or(1);
    let many_rows = rows > PACKED_MAX_ROWS && weight.numel() > 0;
    packed
        .filter(|p| !many_rows && p.stands_for(weight))
        .and_then(|p| crate::cpu::packed_linear(x, &p.matrix, bias))
        // Where the kernel does not apply (an input that wants a gradient, say), a
        // layer whose blocks are its only copy is decoded for the product.
        .unwrap_or_else(|| crate::cpu::linear(x, &dense(weight, packed), bias))
}

/// Rows of input up to which a layer with both copies multiplies from its blocks. On
/// the 2-core AVX-512 development machine, with weights coming from memory (an
/// `[49152, 576]` matrix, `cargo xtask bench linear`), the blocks were 2.1x faster than
/// the f32 weights at 1 row, 1.9x at 16, 1.3x at 64 and even at 256; inside a whole
/// model's batched decoding (the profile stage's batches) they cost about 10% more.
const PACKED_MAX_ROWS: usize = 32;

/// A weight's checkpoint blocks kept beside its f32 tensor (see [`crate::cpu::PackedMatrix`]).
struct Packed {
    matrix: std::sync::Arc<crate::cpu::PackedMatrix>,
    state: std::sync::Mutex<PackState>,
}

/// A weight tensor as it was when compared with its blocks: where its data is and
/// libtorch's version counter, which every in-place write (through the tensor, its
/// views or its shallow clones) advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    address: usize,
    version: i64,
}

impl Seen {
    fn of(weight: &Tensor) -> Self {
        Self {
            address: weight.data_ptr() as usize,
            version: weight.internal_version(),
        }
    }
}

/// What is known of a [`Packed`] matrix against its layer's current weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PackState {
    /// The blocks decode to the tensor seen so (checked).
    Matches(Seen),
    /// They do not (checked).
    Differs(Seen),
    /// The blocks are the only copy of the weight (its tensor is empty until replaced).
    Sole,
}

impl Packed {
    /// Blocks checked against `weight` now (`None` if they do not decode to it).
    fn checked(matrix: crate::cpu::PackedMatrix, weight: &Tensor) -> Option<Self> {
        matrix.decodes_to(weight).then(|| Self {
            matrix: std::sync::Arc::new(matrix),
            state: std::sync::Mutex::new(PackState::Matches(Seen::of(weight))),
        })
    }

    /// Blocks that are the weight's only copy, once the kernel's decoder was checked
    /// against `bitnet_dequant`'s on them (`None` if it differs).
    fn sole(matrix: crate::cpu::PackedMatrix) -> Option<Self> {
        matrix.decodes_as_the_reference().then(|| Self {
            matrix: std::sync::Arc::new(matrix),
            state: std::sync::Mutex::new(PackState::Sole),
        })
    }

    /// The same blocks, for a tied output projection.
    fn share(&self) -> Self {
        Self {
            matrix: std::sync::Arc::clone(&self.matrix),
            state: std::sync::Mutex::new(*self.lock()),
        }
    }

    fn is_sole(&self) -> bool {
        *self.lock() == PackState::Sole
    }

    /// The blocks decoded into an f32 `[rows, cols]` tensor.
    fn decoded(&self) -> Tensor {
        let [rows, cols] = self.matrix.shape();
        Tensor::from_slice(&self.matrix.dequantize()).view([rows as i64, cols as i64])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PackState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a product with `weight` may be computed from the blocks: a plain CPU f32
    /// tensor without gradient that the blocks decode to (checked again whenever the
    /// tensor was replaced or written in place since).
    fn stands_for(&self, weight: &Tensor) -> bool {
        if weight.requires_grad() || weight.device() != Device::Cpu || weight.kind() != Kind::Float
        {
            return false;
        }
        let seen = Seen::of(weight);
        let mut state = self.lock();
        match *state {
            // Until a caller puts a tensor of its own in the empty weight's place.
            PackState::Sole => weight.numel() == 0,
            PackState::Matches(s) if s == seen => true,
            PackState::Differs(s) if s == seen => false,
            _ => {
                let matches = self.matrix.decodes_to(weight);
                *state = if matches {
                    PackState::Matches(seen)
                } else {
                    PackState::Differs(seen)
                };
                matches
            }
        }
    }
}

/// Which BitLinear quantizations a forward applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantization {
    activations: bool,
    weights: bool,
}

/// `quantized` in the forward, `x`'s gradient in the backward (straight-through
/// estimator): rounding has a zero derivative almost everywhere, which would stop every
/// gradient at a quantizer. Only when `x` needs a gradient; otherwise `quantized` as is,
/// so inference matches transformers bit for bit.
fn straight_through(x: &Tensor, quantized: Tensor) -> Tensor {
    if x.requires_grad() {
        x + (quantized - x).detach()
    } else {
        quantized
    }
}

/// transformers' BitNet activation quantization: per token (last dimension),
/// `s = 127 / max(|x|, 1e-5)`, `round(x * s).clamp(-128, 127) / s`. Differentiable as
/// the identity (straight-through) when `x` requires a gradient.
pub fn quantize_activations(x: &Tensor) -> Tensor {
    let scale = 127.0 / x.abs().amax([-1i64].as_slice(), true).clamp_min(1e-5);
    let quantized = (x * &scale).round().clamp(-128.0, 127.0) / scale;
    straight_through(x, quantized)
}

/// BitNet b1.58 weight quantization of latent weights (absmean, per tensor):
/// `s = 1 / max(mean(|W|), 1e-5)`, `round(W * s).clamp(-1, 1) / s`, as transformers'
/// online quantization and `bitnet-dequant`'s packing compute it. Differentiable as the
/// identity (straight-through) when `w` requires a gradient: quantization-aware training.
pub fn ternarize_weights(w: &Tensor) -> Tensor {
    let scale = 1.0 / w.abs().mean(Kind::Float).clamp_min(1e-5).to_kind(w.kind());
    let quantized = (w * &scale).round().clamp(-1.0, 1.0) / scale;
    straight_through(w, quantized)
}

struct RmsNorm {
    name: String,
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32
            .pow_tensor_scalar(2)
            .mean_dim([-1i64].as_slice(), true, Kind::Float);
        let normed = x32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    sub_norm: Option<RmsNorm>,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    sub_norm: Option<RmsNorm>,
}

struct Block {
    input_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    mlp: Mlp,
}

/// One layer's cached keys and values: `[batch, kv heads, capacity, head dim]`, of
/// which the first `len` positions are filled. Appending writes in place (growing by
/// doubling), so a decoding step copies only the new position, not the whole cache.
struct LayerCache {
    keys: Tensor,
    values: Tensor,
    len: i64,
}

impl LayerCache {
    /// Appends `[batch, kv, new, d]` keys and values; returns views of everything cached.
    /// `capacity` (positions) sizes the first allocation when it is known; otherwise
    /// room for twice the first block, at least 64.
    fn append(
        slot: &mut Option<Self>,
        keys: &Tensor,
        values: &Tensor,
        capacity: Option<i64>,
    ) -> (Tensor, Tensor) {
        let new = keys.size()[2];
        let cache = slot.get_or_insert_with(|| {
            let mut shape = keys.size();
            shape[2] = capacity.unwrap_or((2 * new).max(64)).max(new);
            LayerCache {
                keys: Tensor::empty(shape.as_slice(), (keys.kind(), keys.device())),
                values: Tensor::empty(shape.as_slice(), (values.kind(), values.device())),
                len: 0,
            }
        });
        let capacity = cache.keys.size()[2];
        if cache.len + new > capacity {
            let mut shape = cache.keys.size();
            shape[2] = (2 * capacity).max(cache.len + new);
            for tensor in [&mut cache.keys, &mut cache.values] {
                let grown = Tensor::empty(shape.as_slice(), (tensor.kind(), tensor.device()));
                grown
                    .narrow(2, 0, cache.len)
                    .copy_(&tensor.narrow(2, 0, cache.len));
                *tensor = grown;
            }
        }
        cache.keys.narrow(2, cache.len, new).copy_(keys);
        cache.values.narrow(2, cache.len, new).copy_(values);
        cache.len += new;
        (
            cache.keys.narrow(2, 0, cache.len),
            cache.values.narrow(2, 0, cache.len),
        )
    }
}

/// Keys and values of earlier positions, per layer, for incremental decoding.
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// `[batch, positions so far]`: 1 for real tokens, 0 for padding.
    mask: Option<Tensor>,
    /// Positions to allocate room for at the first append, when known.
    capacity: Option<i64>,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> i64 {
        self.mask.as_ref().map_or(0, |m| m.size()[1])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How [`CausalLm::load_with`] keeps weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// For inference on the CPU: a GGUF tensor in a block format the CPU kernel reads
    /// (Q4_0, Q4_1, Q8_0) is kept only as its blocks, not also as f32 values, so a
    /// Q4_1 model takes about a sixth of the memory. Its layer's `weight` is then empty
    /// ([`Linear::dense_weight`] decodes it), the embeddings are looked up from the
    /// blocks, and [`CausalLm::named_parameters`] gives decoded copies (training them
    /// does not train the model). Results are the same bits as with the f32 weights.
    /// Ignored (f32 weights as usual) off the CPU, for other kinds than f32, and where
    /// [`crate::cpu::packing_enabled`] is false. Default: off.
    pub packed_only: bool,
}

/// A causal language model.
pub struct CausalLm {
    config: ModelConfig,
    embed: Tensor,
    /// The embeddings' blocks where they are their only copy ([`LoadOptions::packed_only`]).
    embed_packed: Option<Packed>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    lm_head_packed: Option<Packed>,
    tied_embeddings: bool,
    inv_freq: Tensor,
    device: Device,
    kind: Kind,
    quantization: Quantization,
}

impl CausalLm {
    /// Loads a Hugging Face checkpoint folder (`config.json` and the weights) or a
    /// llama-family `.gguf` file (config from its metadata, weights dequantized; see
    /// `bitnet_dequant::gguf_model`) onto `device` as `kind` (`Float`, `BFloat16` or
    /// `Half`).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_with(dir, device, kind, LoadOptions::default())
    }

    /// [`CausalLm::load`] with [`LoadOptions`].
    pub fn load_with(dir: &Path, device: Device, kind: Kind, options: LoadOptions) -> Result<Self> {
        crate::device::runtime();
        let checkpoint = Checkpoint::open(dir)?;
        let config = match &checkpoint {
            Checkpoint::GgufModel(model) => ModelConfig::from_map(model.config(), dir)?,
            Checkpoint::Gguf(_) => {
                return Err(Error::Config {
                    path: dir.to_path_buf(),
                    message: format!(
                        "is a GGUF file but not a model this crate runs: its \
                         general.architecture must be one of {} with a block_count",
                        bitnet_dequant::gguf_model::ARCHITECTURES.join(", ")
                    ),
                });
            }
            Checkpoint::Hf(_) => ModelConfig::from_file(&dir.join("config.json"))?,
        };
        let mut loader = Loader {
            source: Source::Checkpoint(&checkpoint),
            path: dir.to_path_buf(),
            device,
            kind,
            used: Vec::new(),
            packed_only: options.packed_only,
        };
        let model = Self::build(config, &mut loader)?;
        loader.check_all_used()?;
        drop(loader);
        drop(checkpoint);
        // Decoding buffers and unmapped checkpoint pages: give them back now rather
        // than carry them as free heap for the model's lifetime.
        crate::device::release_free_memory();
        Ok(model)
    }

    /// A freshly initialised model for training: norms 1, every other weight drawn from
    /// N(0, `config.initializer_range`^2) after `tch::manual_seed(seed)` (libtorch's
    /// global generator, so the same seed gives the same weights on one device type).
    /// Every weight requires a gradient ([`CausalLm::named_parameters`]). A BitNet
    /// config gives BitLinear layers with 8-bit activations; switch
    /// [`CausalLm::set_weight_quantization`] on for quantization-aware training.
    pub fn init(config: ModelConfig, seed: u64, device: Device, kind: Kind) -> Result<Self> {
        crate::device::runtime();
        if !(config.initializer_range.is_finite() && config.initializer_range > 0.0) {
            return Err(Error::Input(format!(
                "initializer_range is {}, expected a positive standard deviation",
                config.initializer_range
            )));
        }
        tch::manual_seed(seed as i64);
        let mut loader = Loader {
            source: Source::Random {
                std: config.initializer_range,
            },
            path: PathBuf::from("<initialised>"),
            device,
            kind,
            used: Vec::new(),
            packed_only: false,
        };
        Self::build(config, &mut loader)
    }

    /// Every weight by its Hugging Face name (shallow clones: training them trains the
    /// model), embeddings first, then layer by layer; `lm_head.weight` only when it is
    /// not tied to the embeddings.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_owned(),
            dense(&self.embed, self.embed_packed.as_ref()),
        )];
        let linear = |l: &Linear| (format!("{}.weight", l.name), l.dense_weight());
        let norm = |n: &RmsNorm| (n.name.clone(), n.weight.shallow_clone());
        for block in &self.blocks {
            out.push(norm(&block.input_norm));
            let a = &block.attention;
            out.extend([&a.q, &a.k, &a.v, &a.o].map(linear));
            out.extend(a.sub_norm.iter().map(norm));
            out.push(norm(&block.post_attention_norm));
            let m = &block.mlp;
            out.extend([&m.gate, &m.up, &m.down].map(linear));
            out.extend(m.sub_norm.iter().map(norm));
            for l in [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down] {
                if let Some(bias) = &l.bias {
                    out.push((format!("{}.bias", l.name), bias.shallow_clone()));
                }
            }
        }
        out.push(norm(&self.norm));
        if !self.tied_embeddings {
            out.push((
                "lm_head.weight".to_owned(),
                dense(&self.lm_head, self.lm_head_packed.as_ref()),
            ));
        }
        out
    }

    fn build(config: ModelConfig, loader: &mut Loader<'_>) -> Result<Self> {
        let h = config.hidden_size as i64;
        let i = config.intermediate_size as i64;
        let d = config.head_dim as i64;
        let heads = config.num_attention_heads as i64;
        let kv = config.num_key_value_heads as i64;
        let bitnet = config.architecture == Architecture::BitNet;
        // Only a quantized BitNet checkpoint has BitLinear layers: transformers runs a
        // float BitNet checkpoint (no bitnet quantization_config) with plain linears.
        // A freshly initialised BitNet model is trained as BitLinear (QAT).
        let quantized = match loader.source {
            Source::Checkpoint(checkpoint) => matches!(
                checkpoint.format(),
                bitnet_dequant::Format::HfPacked | bitnet_dequant::Format::HfOnline
            ),
            Source::Random { .. } => true,
        };
        let bitlinear = bitnet && quantized;
        let embed_shape = [config.vocab_size as i64, h];
        let (embed, embed_packed) = match loader.sole("model.embed_tokens.weight", &embed_shape)? {
            Some((placeholder, packed)) => (placeholder, Some(packed)),
            None => (
                loader.tensor("model.embed_tokens.weight", &embed_shape)?,
                None,
            ),
        };
        let norm = |loader: &mut Loader<'_>, name: String, size: i64| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: loader.tensor(&name, &[size])?,
                eps: config.rms_norm_eps,
                name,
            })
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let prefix = format!("model.layers.{layer}");
            let attention = Attention {
                q: loader.linear(
                    &format!("{prefix}.self_attn.q_proj"),
                    heads * d,
                    h,
                    config.qkv_bias,
                    bitlinear,
                )?,
                k: loader.linear(
                    &format!("{prefix}.self_attn.k_proj"),
                    kv * d,
                    h,
                    config.qkv_bias,
                    bitlinear,
                )?,
                v: loader.linear(
                    &format!("{prefix}.self_attn.v_proj"),
                    kv * d,
                    h,
                    config.qkv_bias,
                    bitlinear,
                )?,
                o: loader.linear(
                    &format!("{prefix}.self_attn.o_proj"),
                    h,
                    heads * d,
                    config.o_bias,
                    bitlinear,
                )?,
                sub_norm: if bitnet {
                    Some(norm(
                        loader,
                        format!("{prefix}.self_attn.attn_sub_norm.weight"),
                        heads * d,
                    )?)
                } else {
                    None
                },
            };
            let mlp = Mlp {
                gate: loader.linear(
                    &format!("{prefix}.mlp.gate_proj"),
                    i,
                    h,
                    config.mlp_bias,
                    bitlinear,
                )?,
                up: loader.linear(
                    &format!("{prefix}.mlp.up_proj"),
                    i,
                    h,
                    config.mlp_bias,
                    bitlinear,
                )?,
                down: loader.linear(
                    &format!("{prefix}.mlp.down_proj"),
                    h,
                    i,
                    config.mlp_bias,
                    bitlinear,
                )?,
                sub_norm: if bitnet {
                    Some(norm(
                        loader,
                        format!("{prefix}.mlp.ffn_sub_norm.weight"),
                        i,
                    )?)
                } else {
                    None
                },
            };
            blocks.push(Block {
                input_norm: norm(loader, format!("{prefix}.input_layernorm.weight"), h)?,
                attention,
                post_attention_norm: norm(
                    loader,
                    format!("{prefix}.post_attention_layernorm.weight"),
                    h,
                )?,
                mlp,
            });
        }
        let final_norm = norm(loader, "model.norm.weight".into(), h)?;
        let tied_embeddings = config.tie_word_embeddings && !loader.has("lm_head.weight");
        let (lm_head, lm_head_packed) = if tied_embeddings {
            let packed = match &embed_packed {
                Some(sole) => Some(sole.share()),
                None => loader.packed("model.embed_tokens.weight", &embed)?,
            };
            (embed.shallow_clone(), packed)
        } else {
            match loader.sole("lm_head.weight", &embed_shape)? {
                Some((placeholder, packed)) => (placeholder, Some(packed)),
                None => {
                    let weight = loader.tensor("lm_head.weight", &embed_shape)?;
                    let packed = loader.packed("lm_head.weight", &weight)?;
                    (weight, packed)
                }
            }
        };
        let inv_freq = Tensor::from_slice(&inverse_frequencies(&config)).to_device(loader.device);
        Ok(Self {
            embed,
            embed_packed,
            blocks,
            norm: final_norm,
            lm_head,
            lm_head_packed,
            tied_embeddings,
            inv_freq,
            device: loader.device,
            kind: loader.kind,
            quantization: Quantization {
                activations: bitlinear,
                weights: false,
            },
            config,
        })
    }

    /// Every packed copy of a weight, the output projection's included.
    fn packed_weights(&self) -> impl Iterator<Item = &Packed> {
        self.blocks
            .iter()
            .flat_map(|b| {
                let (a, m) = (&b.attention, &b.mlp);
                [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
            })
            .filter_map(|l| l.packed.as_ref())
            .chain(self.lm_head_packed.as_ref())
            // Tied, the embeddings' blocks are the output projection's.
            .chain(self.embed_packed.as_ref().filter(|_| !self.tied_embeddings))
    }

    /// Bytes of checkpoint blocks the CPU's packed products read (see
    /// [`crate::cpu::PackedMatrix`]): 0 when none were loaded, and without those found
    /// at their last use to differ from a replaced or rewritten weight.
    pub fn packed_bytes(&self) -> usize {
        self.packed_weights()
            .filter(|p| !matches!(*p.lock(), PackState::Differs(_)))
            .map(|p| p.matrix.byte_len())
            .sum()
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The weights' element type.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Switches BitLinear activation quantization (on by default for BitNet models).
    pub fn set_activation_quantization(&mut self, on: bool) {
        self.quantization.activations = on;
    }

    /// Switches ternary weight quantization of BitLinear layers (off by default; for
    /// quantization-aware training of latent float weights, see [`ternarize_weights`]).
    /// A packed checkpoint's weights are already ternary: leave it off for them.
    pub fn set_weight_quantization(&mut self, on: bool) {
        self.quantization.weights = on;
    }

    /// Every linear layer, by its Hugging Face name, in layer order.
    pub fn linear_layers_mut(&mut self) -> Vec<&mut Linear> {
        let mut layers = Vec::new();
        for block in &mut self.blocks {
            let a = &mut block.attention;
            layers.extend([&mut a.q, &mut a.k, &mut a.v, &mut a.o]);
            let m = &mut block.mlp;
            layers.extend([&mut m.gate, &mut m.up, &mut m.down]);
        }
        layers
    }

    /// A fresh cache for incremental decoding.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.blocks.len()).map(|_| None).collect(),
            mask: None,
            capacity: None,
        }
    }

    /// A fresh cache with room for `positions` positions from the start (it still grows
    /// beyond them if needed): no over-allocation and no copies when the length of the
    /// sequences is known, as in generation.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        KvCache {
            capacity: Some(positions as i64),
            ..self.new_cache()
        }
    }

    /// Logits `[batch, new positions, vocab]` (f32) for `input_ids` `[batch, new
    /// positions]` (int64). `attention_mask` (`[batch, new positions]`, 1 for tokens, 0
    /// for left padding) defaults to all ones. With a cache, earlier positions are taken
    /// from it and the new ones appended.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_positions(input_ids, attention_mask, cache, false)
    }

    /// [`CausalLm::forward`] returning only the last position's logits
    /// (`[batch, 1, vocab]`) when `last_only`: the output projection over the whole
    /// vocabulary is then computed once per sequence, which is all generation needs.
    pub fn forward_positions(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        let hidden = self.hidden_states(input_ids, attention_mask, cache)?;
        let hidden = if last_only {
            let new = hidden.size()[1];
            hidden.narrow(1, new - 1, 1)
        } else {
            hidden
        };
        Ok(self.project(&hidden))
    }

    /// The last block's output `[batch, new positions, hidden]` (before the final norm),
    /// with the same inputs and cache handling as [`CausalLm::forward`].
    pub(crate) fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let size = input_ids.size();
        let [batch, new] = size[..] else {
            return Err(Error::Input(format!(
                "input_ids has shape {size:?}, expected [batch, positions]"
            )));
        };
        let input_ids = input_ids.to_device(self.device);
        let new_mask = match attention_mask {
            Some(mask) => {
                if mask.size() != size {
                    return Err(Error::Input(format!(
                        "attention_mask has shape {:?}, input_ids {size:?}",
                        mask.size()
                    )));
                }
                mask.to_device(self.device).to_kind(Kind::Int64)
            }
            None => Tensor::ones([batch, new], (Kind::Int64, self.device)),
        };
        let mut cache = cache;
        let full_mask = match cache.as_deref().and_then(|c| c.mask.as_ref()) {
            Some(previous) => Tensor::cat(&[previous, &new_mask], 1),
            None => new_mask.shallow_clone(),
        };
        let past = full_mask.size()[1] - new;
        // Positions count real tokens only, so left padding does not shift them.
        let positions = (full_mask.cumsum(1, Kind::Int64) - 1)
            .clamp_min(0)
            .narrow(1, past, new);
        let (cos, sin) = self.rotary(&positions);
        let bias = self.attention_bias(&full_mask, &positions, past);

        let mut hidden = self.embed_tokens(&input_ids)?;
        for (index, block) in self.blocks.iter().enumerate() {
            let residual = hidden.shallow_clone();
            let x = block.input_norm.forward(&hidden);
            let layer_cache = cache
                .as_deref_mut()
                .map(|c| (&mut c.layers[index], c.capacity));
            let attended = self.attention(&block.attention, &x, &cos, &sin, &bias, layer_cache);
            hidden = residual + attended;
            let residual = hidden.shallow_clone();
            let x = block.post_attention_norm.forward(&hidden);
            hidden = residual + self.mlp(&block.mlp, &x);
        }
        if let Some(cache) = cache {
            cache.mask = Some(full_mask);
        }
        Ok(hidden)
    }

    /// The embeddings of `input_ids` (`[batch, new]`): `[batch, new, hidden]`.
    fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        let Some(packed) = self
            .embed_packed
            .as_ref()
            .filter(|_| self.embed.numel() == 0)
        else {
            return Ok(Tensor::embedding(&self.embed, input_ids, -1, false, false));
        };
        let ids = Vec::<i64>::try_from(input_ids.flatten(0, -1))?;
        let values = packed.matrix.decode_rows(&ids).ok_or_else(|| {
            Error::Input(format!(
                "a token id in {ids:?} is outside the vocabulary of {}",
                self.config.vocab_size
            ))
        })?;
        let mut shape = input_ids.size();
        shape.push(self.config.hidden_size as i64);
        Ok(Tensor::from_slice(&values).view(shape.as_slice()))
    }

    /// The final norm alone.
    pub(crate) fn final_norm(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(hidden)
    }

    /// Final norm and output projection: logits (f32) for hidden states `[.., hidden]`.
    /// Per position, so it commutes with choosing positions first.
    pub(crate) fn project(&self, hidden: &Tensor) -> Tensor {
        let normed = self.norm.forward(hidden);
        packed_or_f32(&normed, &self.lm_head, self.lm_head_packed.as_ref(), None)
            .to_kind(Kind::Float)
    }

    fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        // [batch, new, head_dim / 2] -> [batch, 1, new, head_dim]
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(self.kind), emb.sin().to_kind(self.kind))
    }

    /// Additive bias `[batch, 1, new, total]`: 0 where a query may attend, a large
    /// negative number elsewhere (future positions, padding, outside the sliding window).
    fn attention_bias(&self, full_mask: &Tensor, positions: &Tensor, past: i64) -> Tensor {
        let total = full_mask.size()[1];
        let new = positions.size()[1];
        let query_index =
            Tensor::arange_start(past, past + new, (Kind::Int64, self.device)).view([1, 1, new, 1]);
        let key_index = Tensor::arange(total, (Kind::Int64, self.device)).view([1, 1, 1, total]);
        let mut allowed = key_index
            .le_tensor(&query_index)
            .logical_and(&full_mask.view([-1, 1, 1, total]).eq(1));
        if let Some(window) = self.config.sliding_window {
            let key_positions = (full_mask.cumsum(1, Kind::Int64) - 1).view([-1, 1, 1, total]);
            let query_positions = positions.view([-1, 1, new, 1]);
            allowed = allowed.logical_and(&(query_positions - key_positions).lt(window as i64));
        }
        Tensor::zeros(allowed.size(), (Kind::Float, self.device))
            .masked_fill(&allowed.logical_not(), f64::from(f32::MIN))
    }

    fn attention(
        &self,
        attention: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
        cache: Option<(&mut Option<LayerCache>, Option<i64>)>,
    ) -> Tensor {
        let quantize = self.quantization;
        let (batch, new) = (x.size()[0], x.size()[1]);
        let heads = self.config.num_attention_heads as i64;
        let kv_heads = self.config.num_key_value_heads as i64;
        let d = self.config.head_dim as i64;
        let shape = |t: Tensor, n: i64| t.view([batch, new, n, d]).transpose(1, 2);
        let fused = new == 1 && crate::cpu::attention::applies(&[x, cos, sin, bias]);
        if fused && let Some((slot, capacity)) = cache {
            // A decoding step on the CPU: the fused path (see `cpu::attention`).
            let rotated = |t: Tensor, n: i64| {
                let flat = t.view([batch, n * d]);
                crate::cpu::attention::rope(
                    &flat,
                    &cos.view([batch, d]),
                    &sin.view([batch, d]),
                    d as usize,
                )
            };
            let q = rotated(attention.q.forward(x, quantize), heads);
            let k = rotated(attention.k.forward(x, quantize), kv_heads);
            let v = attention.v.forward(x, quantize);
            let (k, v) =
                LayerCache::append(slot, &shape(k, kv_heads), &shape(v, kv_heads), capacity);
            let total = k.size()[2];
            let scale = (1.0 / (d as f64).sqrt()) as f32;
            if let Some(out) = crate::cpu::attention::decode_attention(
                &q,
                &k,
                &v,
                &bias.view([batch, total]),
                scale,
                heads as usize,
            ) {
                let out = match &attention.sub_norm {
                    Some(norm) => norm.forward(&out),
                    None => out,
                };
                return attention.o.forward(&out, quantize);
            }
            // Shapes the fused path does not take: libtorch's, on what is cached.
            let q = q.view([batch, new, heads, d]).transpose(1, 2);
            return self.attend(attention, &q, &k, &v, bias);
        }
        let q = rope(&shape(attention.q.forward(x, quantize), heads), cos, sin);
        let mut k = rope(&shape(attention.k.forward(x, quantize), kv_heads), cos, sin);
        let mut v = shape(attention.v.forward(x, quantize), kv_heads);
        if let Some((slot, capacity)) = cache {
            (k, v) = LayerCache::append(slot, &k, &v, capacity);
        }
        self.attend(attention, &q, &k, &v, bias)
    }

    /// Attention of rotated queries `q` (`[batch, heads, new, d]`) on keys and values
    /// (`[batch, kv heads, total, d]`), then the output projection.
    fn attend(
        &self,
        attention: &Attention,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
    ) -> Tensor {
        let quantize = self.quantization;
        let [batch, heads, new, d] = q.size()[..] else {
            unreachable!("queries are [batch, heads, new, d]")
        };
        let kv_heads = k.size()[1];
        // Grouped-query attention without copying keys and values per head: the `repeat`
        // query heads that share a key/value head are stacked along the query axis.
        let repeat = heads / kv_heads;
        let total = k.size()[2];
        let grouped_q = q.reshape([batch, kv_heads, repeat * new, d]);
        let scores = grouped_q
            .matmul(&k.transpose(2, 3))
            .view([batch, heads, new, total])
            .to_kind(Kind::Float)
            * (1.0 / (d as f64).sqrt())
            + bias;
        let weights = scores.softmax(-1, Kind::Float).to_kind(self.kind).view([
            batch,
            kv_heads,
            repeat * new,
            total,
        ]);
        let out = weights
            .matmul(v)
            .view([batch, heads, new, d])
            .transpose(1, 2)
            .reshape([batch, new, heads * d]);
        let out = match &attention.sub_norm {
            Some(norm) => norm.forward(&out),
            None => out,
        };
        attention.o.forward(&out, quantize)
    }

    fn mlp(&self, mlp: &Mlp, x: &Tensor) -> Tensor {
        let quantize = self.quantization;
        let gate = mlp.gate.forward(x, quantize);
        let activated = match self.config.activation {
            Activation::Silu => gate.silu(),
            Activation::Relu2 => gate.relu().square(),
        };
        let inner = activated * mlp.up.forward(x, quantize);
        let inner = match &mlp.sub_norm {
            Some(norm) => norm.forward(&inner),
            None => inner,
        };
        mlp.down.forward(&inner, quantize)
    }
}

/// RoPE in transformers' "rotate half" convention.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::cat(&[&(-&x2), &x1], 3);
    x * cos + rotated * sin
}

/// RoPE inverse frequencies, with Llama 3 scaling when configured (transformers'
/// `_compute_llama3_parameters`).
fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let dim = config.head_dim;
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    let Some(scaling) = config.rope_scaling else {
        return base.iter().map(|&f| f as f32).collect();
    };
    let low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor;
    let high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen > low_wavelen {
                f / scaling.factor
            } else {
                f
            };
            // Finite wavelengths: "not below high and not above low" is a closed range.
            let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
            let value = if medium {
                let smooth = (scaling.original_max_position_embeddings / wavelen
                    - scaling.low_freq_factor)
                    / (scaling.high_freq_factor - scaling.low_freq_factor);
                (1.0 - smooth) * scaled / scaling.factor + smooth * scaled
            } else {
                scaled
            };
            value as f32
        })
        .collect()
}

/// Where [`Loader`] takes weights from.
enum Source<'a> {
    Checkpoint(&'a Checkpoint),
    /// Fresh trainable weights: norms 1, everything else N(0, std^2).
    Random {
        std: f64,
    },
}

struct Loader<'a> {
    source: Source<'a>,
    path: PathBuf,
    device: Device,
    kind: Kind,
    used: Vec<String>,
    /// [`LoadOptions::packed_only`].
    packed_only: bool,
}

impl Loader<'_> {
    fn has(&self, name: &str) -> bool {
        match self.source {
            Source::Checkpoint(checkpoint) => checkpoint.tensor(name).is_ok(),
            Source::Random { .. } => false,
        }
    }

    fn tensor(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let checkpoint = match self.source {
            Source::Checkpoint(checkpoint) => checkpoint,
            Source::Random { std } => {
                let options = (Kind::Float, Device::Cpu);
                let values = if name.ends_with("norm.weight") {
                    Tensor::ones(shape, options)
                } else {
                    Tensor::randn(shape, options) * std
                };
                let values = values.to_kind(self.kind).to_device(self.device);
                return Ok(values.set_requires_grad(true));
            }
        };
        let info = checkpoint.tensor(name).map_err(|_| Error::Weights {
            path: self.path.clone(),
            tensor: name.to_owned(),
            message: "is missing from the checkpoint".into(),
        })?;
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != shape {
            return Err(Error::Weights {
                path: self.path.clone(),
                tensor: name.to_owned(),
                message: format!("has shape {found:?}, the config implies {shape:?}"),
            });
        }
        // Decode straight into the tensor's memory: no second copy of the weights.
        let tensor = Tensor::empty(shape, (Kind::Float, Device::Cpu));
        let numel = info.numel();
        // SAFETY: a new contiguous f32 tensor of `numel` elements, not shared yet.
        let values =
            unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr().cast::<f32>(), numel) };
        checkpoint.dequantize_into(name, values, true)?;
        checkpoint.release(name);
        self.used.push(name.to_owned());
        Ok(tensor.to_kind(self.kind).to_device(self.device))
    }

    fn linear(
        &mut self,
        name: &str,
        out: i64,
        input: i64,
        bias: bool,
        bitlinear: bool,
    ) -> Result<Linear> {
        let (weight, packed) = match self.sole(&format!("{name}.weight"), &[out, input])? {
            Some((placeholder, packed)) => (placeholder, Some(packed)),
            None => {
                let weight = self.tensor(&format!("{name}.weight"), &[out, input])?;
                let packed = self.packed(&format!("{name}.weight"), &weight)?;
                (weight, packed)
            }
        };
        let bias = if bias {
            Some(self.tensor(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear {
            name: name.to_owned(),
            weight,
            bias,
            bitlinear,
            adapter: None,
            packed,
        })
    }

    /// The checkpoint's blocks of `name` for the CPU's packed products, where they can
    /// serve: a GGUF tensor in a block format the kernel reads, a CPU f32 model, a
    /// kernel on this processor, and blocks that decode to `weight` bit for bit.
    fn packed(&self, name: &str, weight: &Tensor) -> Result<Option<Packed>> {
        let &[rows, cols] = weight.size().as_slice() else {
            return Ok(None);
        };
        Ok(self
            .blocks(name, [rows, cols])?
            .and_then(|matrix| Packed::checked(matrix, weight)))
    }

    /// With [`LoadOptions::packed_only`], the blocks of `name` (of `shape`) as its only
    /// copy, with an empty tensor in the weight's place; `None` where blocks cannot
    /// serve (see [`Loader::packed`]) or their decoding differs from the reference's.
    fn sole(&mut self, name: &str, shape: &[i64; 2]) -> Result<Option<(Tensor, Packed)>> {
        if !self.packed_only {
            return Ok(None);
        }
        let Some(packed) = self.blocks(name, *shape)?.and_then(Packed::sole) else {
            return Ok(None);
        };
        let info = match self.source {
            Source::Checkpoint(checkpoint) => checkpoint.tensor(name)?,
            Source::Random { .. } => return Ok(None),
        };
        if info
            .shape
            .iter()
            .map(|&d| d as i64)
            .ne(shape.iter().copied())
        {
            return Err(Error::Weights {
                path: self.path.clone(),
                tensor: name.to_owned(),
                message: format!("has shape {:?}, the config implies {shape:?}", info.shape),
            });
        }
        self.used.push(name.to_owned());
        Ok(Some((
            Tensor::empty([0], (Kind::Float, Device::Cpu)),
            packed,
        )))
    }

    /// The blocks of `name` in HF row order, where the CPU kernel can read them.
    fn blocks(
        &self,
        name: &str,
        [rows, cols]: [i64; 2],
    ) -> Result<Option<crate::cpu::PackedMatrix>> {
        let Source::Checkpoint(Checkpoint::GgufModel(model)) = self.source else {
            return Ok(None);
        };
        if self.device != Device::Cpu || self.kind != Kind::Float || !crate::cpu::packing_enabled()
        {
            return Ok(None);
        }
        let Ok(bitnet_dequant::gguf::GgmlType::Quant(kind)) = model.ggml_type(name) else {
            return Ok(None);
        };
        let Some(format) = crate::cpu::PackFormat::of(kind) else {
            return Ok(None);
        };
        let stored = model.raw_bytes(name)?;
        let mut bytes = vec![0u8; stored.len()];
        model.arrange_into(name, stored, &mut bytes)?;
        model.release(name);
        Ok(crate::cpu::PackedMatrix::new(format, rows as usize, cols as usize, bytes).ok())
    }

    /// Every tensor of the checkpoint must have been used (`lm_head` may be absent or
    /// tied; `rotary_emb.inv_freq` buffers are recomputed).
    fn check_all_used(&self) -> Result<()> {
        let Source::Checkpoint(checkpoint) = self.source else {
            return Ok(());
        };
        for info in checkpoint.tensors() {
            let name = &info.name;
            if self.used.iter().any(|u| u == name) || name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            return Err(Error::Weights {
                path: self.path.clone(),
                tensor: name.clone(),
                message: "is in the checkpoint but not part of the model the config describes"
                    .into(),
            });
        }
        Ok(())
    }
}
