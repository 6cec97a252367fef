//! Putting experts into a model: factorized adapters, or merged dense weights.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bitnet_dequant::Checkpoint;
use bitnet_dequant::io::{StDtype, StEntry, StreamingSafetensors};
use lm::{CausalLm, Linear, LinearAdapter};
use tch::{Device, Kind, Tensor};

use crate::compose::scales;
use crate::{Composition, Decomposition, Error, Expert, Factors, Mixture, Result};

/// `y = ((x V) * m) U^T + b`: the adapted layer without building `W'`. Both products
/// go through [`lm::cpu::linear`] (as `x (V^T)^T` and `h U^T`), so on the CPU the
/// factorized forward uses the same kernels as the plain one.
struct Factorized {
    /// `U`, `[out, rank]`, contiguous.
    u: Tensor,
    /// `V^T`, `[rank, in]`, contiguous.
    v_t: Tensor,
    scale: Arc<Mutex<Tensor>>,
}

impl Factorized {
    /// The adapter of one matrix, on the layer's device and element type.
    fn boxed(
        f: &Factors,
        device: Device,
        kind: Kind,
        slot: &Arc<Mutex<Tensor>>,
    ) -> Box<dyn LinearAdapter> {
        Box::new(Self {
            u: f.u.to_device(device).to_kind(kind).contiguous(),
            v_t: f
                .v
                .to_device(device)
                .to_kind(kind)
                .transpose(0, 1)
                .contiguous(),
            scale: Arc::clone(slot),
        })
    }
}

impl LinearAdapter for Factorized {
    fn forward(&self, x: &Tensor, layer: &Linear) -> Tensor {
        let scale = self.scale.lock().expect("scale lock").shallow_clone();
        let inner = lm::cpu::linear(x, &self.v_t, None) * scale;
        lm::cpu::linear(&inner, &self.u, layer.bias.as_ref())
    }
}

/// SVF installed in a model: experts, mixture, and the per-matrix scales the layers use.
pub struct Svf {
    decomposition: Decomposition,
    composition: Composition,
    slots: Vec<Arc<Mutex<Tensor>>>,
    experts: Vec<Vec<Tensor>>,
    mixture: Mixture,
    /// Original weights while merged, by layer.
    originals: Vec<Tensor>,
}

impl Svf {
    /// Installs factorized adapters on the decomposed layers of `model`, starting from
    /// the identity (`m = s`, i.e. `W' = W` up to the SVD's rounding).
    pub fn install(
        model: &mut CausalLm,
        decomposition: Decomposition,
        composition: Composition,
    ) -> Result<Self> {
        let device = model.device();
        let kind = model.kind();
        let factors = decomposition.factors();
        let mut slots = Vec::with_capacity(factors.len());
        let mut layers = model.linear_layers_mut();
        for f in factors {
            let layer = layers
                .iter_mut()
                .find(|l| l.name == f.name)
                .ok_or_else(|| Error::Mismatch(format!("the model has no layer `{}`", f.name)))?;
            if layer.weight.size() != [f.rows() as i64, f.cols() as i64] {
                return Err(Error::Mismatch(format!(
                    "layer `{}` is {:?}, the decomposition {}x{}",
                    f.name,
                    layer.weight.size(),
                    f.rows(),
                    f.cols()
                )));
            }
            let slot = Arc::new(Mutex::new(f.s.to_device(device).to_kind(kind)));
            layer.set_adapter(Some(Factorized::boxed(f, device, kind, &slot)));
            slots.push(slot);
        }
        Ok(Self {
            decomposition,
            composition,
            slots,
            experts: Vec::new(),
            mixture: Mixture::uniform(1),
            originals: Vec::new(),
        })
    }

    /// The decomposition in use.
    pub fn decomposition(&self) -> &Decomposition {
        &self.decomposition
    }

    /// Chooses experts and their mixture (takes effect at [`Svf::refresh`]). The z
    /// tensors are shared, not copied: gradients flow back into them.
    pub fn set_experts(&mut self, experts: &[&Expert], mixture: &Mixture) -> Result<()> {
        for expert in experts {
            expert.check_compatible(&self.decomposition)?;
        }
        mixture.check(experts.len(), self.decomposition.factors().len())?;
        self.experts = experts
            .iter()
            .map(|e| e.z.iter().map(|(_, z)| z.shallow_clone()).collect())
            .collect();
        self.mixture = match mixture {
            Mixture::PerExpert(a) => Mixture::PerExpert(a.shallow_clone()),
            Mixture::PerMatrix(a) => Mixture::PerMatrix(a.shallow_clone()),
        };
        Ok(())
    }

    /// The scale `m` of every matrix for the current experts and mixture.
    pub fn scales(&self) -> Vec<Tensor> {
        self.decomposition
            .factors()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if self.experts.is_empty() {
                    return f.s.shallow_clone();
                }
                let zs: Vec<&Tensor> = self.experts.iter().map(|e| &e[i]).collect();
                let alphas: Vec<Tensor> = (0..zs.len()).map(|k| self.mixture.alpha(k, i)).collect();
                scales(self.composition, &f.s, &zs, &alphas)
            })
            .collect()
    }

    /// Recomputes the scales from the experts and mixture and hands them to the layers
    /// (keeping the autograd graph: a loss on the next forward reaches z and alpha).
    pub fn refresh(&self) -> Result<()> {
        for (slot, scale) in self.slots.iter().zip(self.scales()) {
            let mut target = slot.lock().expect("scale lock");
            let (device, kind) = (target.device(), target.kind());
            *target = scale.to_device(device).to_kind(kind);
        }
        Ok(())
    }

    /// Hands the layers the base scales `s` (`W' = W` up to the SVD's rounding) until
    /// the next [`Svf::refresh`]: the frozen reference policy without a second model.
    pub fn use_base_scales(&self) {
        for (slot, f) in self.slots.iter().zip(self.decomposition.factors()) {
            let mut target = slot.lock().expect("scale lock");
            let (device, kind) = (target.device(), target.kind());
            *target = f.s.to_device(device).to_kind(kind);
        }
    }

    /// The dense `W' = U diag(m) V^T` of every matrix, for the current scales.
    pub fn merged_weights(&self) -> Vec<(String, Tensor)> {
        let _guard = tch::no_grad_guard();
        self.decomposition
            .factors()
            .iter()
            .zip(self.scales())
            .map(|(f, m)| {
                // (U diag(m)) V^T as a linear layer with weight V: on the CPU it runs
                // on `lm`'s kernel.
                let scaled_u = &f.u * m.detach().to_kind(f.u.kind()).unsqueeze(0);
                (f.name.clone(), lm::cpu::linear(&scaled_u, &f.v, None))
            })
            .collect()
    }

    /// Bakes the current scales into the layers' weights and removes the adapters: the
    /// model then runs at its plain dense speed. [`Svf::unmerge`] undoes it.
    pub fn merge(&mut self, model: &mut CausalLm) -> Result<()> {
        if !self.originals.is_empty() {
            return Err(Error::Invalid("the experts are already merged".into()));
        }
        let merged = self.merged_weights();
        for (layer, (name, weight)) in model
            .linear_layers_mut()
            .into_iter()
            .filter(|l| self.decomposition.selection().matches(&l.name))
            .zip(merged)
        {
            debug_assert_eq!(layer.name, name);
            let weight = weight
                .to_device(layer.weight.device())
                .to_kind(layer.weight.kind());
            self.originals
                .push(std::mem::replace(&mut layer.weight, weight));
            // The adapter would apply SVF a second time on top of the merged weights.
            layer.set_adapter(None);
        }
        Ok(())
    }

    /// Restores the original weights and the factorized adapters.
    pub fn unmerge(&mut self, model: &mut CausalLm) -> Result<()> {
        if self.originals.is_empty() {
            return Err(Error::Invalid("the experts are not merged".into()));
        }
        let originals = std::mem::take(&mut self.originals);
        let factors = self.decomposition.factors();
        for ((layer, original), (f, slot)) in model
            .linear_layers_mut()
            .into_iter()
            .filter(|l| self.decomposition.selection().matches(&l.name))
            .zip(originals)
            .zip(factors.iter().zip(&self.slots))
        {
            let (device, kind) = (original.device(), original.kind());
            layer.weight = original;
            layer.set_adapter(Some(Factorized::boxed(f, device, kind, slot)));
        }
        Ok(())
    }

    /// Removes SVF from the model entirely (original weights, no adapters).
    pub fn uninstall(mut self, model: &mut CausalLm) -> Result<()> {
        if !self.originals.is_empty() {
            self.unmerge(model)?;
        }
        for layer in model
            .linear_layers_mut()
            .into_iter()
            .filter(|l| self.decomposition.selection().matches(&l.name))
        {
            layer.set_adapter(None);
        }
        Ok(())
    }

    /// A dense copy of the current scales, detached (for logging or export).
    pub fn scale_snapshot(&self) -> Vec<Tensor> {
        self.scales()
            .into_iter()
            .map(|m| m.detach().to_kind(Kind::Float))
            .collect()
    }
}

impl Svf {
    /// Writes a plain float Hugging Face checkpoint of `base_dir`'s model with the
    /// current experts baked in: every tensor of the base checkpoint (dequantized if it
    /// is BitNet), the adapted matrices replaced by `W'`, `config.json` without
    /// `quantization_config`, tokenizer and generation files copied. `lm` and
    /// transformers load it as an ordinary model. The folder appears only when complete.
    pub fn export_merged(&self, base_dir: &Path, out: &Path) -> Result<()> {
        let file_error = |path: &Path, e: &dyn std::fmt::Display| Error::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if out.exists() {
            return Err(file_error(out, &"already exists; choose another folder"));
        }
        let checkpoint = Checkpoint::open(base_dir).map_err(|e| file_error(base_dir, &e))?;
        let merged: HashMap<String, Tensor> = self
            .merged_weights()
            .into_iter()
            .map(|(name, w)| (format!("{name}.weight"), w))
            .collect();
        for (name, weight) in &merged {
            let info = checkpoint
                .tensor(name)
                .map_err(|e| file_error(base_dir, &e))?;
            let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
            if shape != weight.size() {
                return Err(Error::Mismatch(format!(
                    "{}: `{name}` is {shape:?} in the base checkpoint, {:?} in the decomposition",
                    base_dir.display(),
                    weight.size()
                )));
            }
        }
        let staging = out.with_file_name(format!(
            ".{}.partial-{}",
            out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| file_error(out, &e))?;
        let result = (|| -> Result<()> {
            let entries = checkpoint
                .tensors()
                .iter()
                .map(|t| StEntry {
                    name: t.name.clone(),
                    dtype: StDtype::F32,
                    shape: t.shape.clone(),
                })
                .collect();
            let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
            let path = staging.join("model.safetensors");
            let mut writer = StreamingSafetensors::create(&path, entries, &metadata)
                .map_err(|e| file_error(&path, &e))?;
            for info in checkpoint.tensors() {
                let values = match merged.get(&info.name) {
                    Some(weight) => {
                        Vec::<f32>::try_from(weight.to_kind(Kind::Float).flatten(0, -1))?
                    }
                    None => checkpoint
                        .dequantize(&info.name)
                        .map_err(|e| file_error(base_dir, &e))?,
                };
                writer
                    .write_tensor(&info.name, bitnet_dequant::io::f32_bytes(&values))
                    .map_err(|e| file_error(&path, &e))?;
            }
            writer.finish().map_err(|e| file_error(&path, &e))?;
            let config_path = base_dir.join("config.json");
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, &e))?;
            let mut config: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| file_error(&config_path, &e))?;
            if let Some(map) = config.as_object_mut() {
                map.remove("quantization_config");
            }
            let text =
                serde_json::to_vec_pretty(&config).map_err(|e| file_error(&config_path, &e))?;
            bitnet_dequant::io::write_atomic(&staging.join("config.json"), &text)
                .map_err(|e| file_error(out, &e))?;
            for name in bitnet_dequant::convert::COMPANION_FILES {
                let source = base_dir.join(name);
                if source.is_file() {
                    std::fs::copy(&source, staging.join(name))
                        .map_err(|e| file_error(&source, &e))?;
                }
            }
            std::fs::rename(&staging, out).map_err(|e| file_error(out, &e))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }
}
