//! Putting experts into a model: factorized adapters, or merged dense weights.

use std::sync::{Arc, Mutex};

use lm::{CausalLm, Linear, LinearAdapter};
use tch::{Kind, Tensor};

use crate::compose::scales;
use crate::{Composition, Decomposition, Error, Expert, Mixture, Result};

/// `y = ((x V) * m) U^T + b`: the adapted layer without building `W'`.
struct Factorized {
    u_t: Tensor,
    v: Tensor,
    scale: Arc<Mutex<Tensor>>,
}

impl LinearAdapter for Factorized {
    fn forward(&self, x: &Tensor, layer: &Linear) -> Tensor {
        let scale = self.scale.lock().expect("scale lock").shallow_clone();
        let y = (x.matmul(&self.v) * scale).matmul(&self.u_t);
        match &layer.bias {
            Some(bias) => y + bias,
            None => y,
        }
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
            layer.set_adapter(Some(Box::new(Factorized {
                u_t: f
                    .u
                    .to_device(device)
                    .to_kind(kind)
                    .transpose(0, 1)
                    .contiguous(),
                v: f.v.to_device(device).to_kind(kind),
                scale: Arc::clone(&slot),
            })));
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

    /// The dense `W' = U diag(m) V^T` of every matrix, for the current scales.
    pub fn merged_weights(&self) -> Vec<(String, Tensor)> {
        let _guard = tch::no_grad_guard();
        self.decomposition
            .factors()
            .iter()
            .zip(self.scales())
            .map(|(f, m)| {
                (
                    f.name.clone(),
                    (&f.u * m.detach().unsqueeze(0)).matmul(&f.v.transpose(0, 1)),
                )
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
            layer.set_adapter(Some(Box::new(Factorized {
                u_t: f
                    .u
                    .to_device(device)
                    .to_kind(kind)
                    .transpose(0, 1)
                    .contiguous(),
                v: f.v.to_device(device).to_kind(kind),
                scale: Arc::clone(slot),
            })));
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
