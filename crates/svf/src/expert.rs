//! Experts: named z-vectors, one per decomposed matrix, with their provenance.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bitnet_dequant::io::{StDtype, StEntry, StreamingSafetensors};
use tch::{Kind, Tensor};

use crate::decompose::layer_order;
use crate::{Composition, Decomposition, Error, Result, Selection};

const EXPERT_FORMAT: &str = "svf-expert";
const EXPERT_VERSION: &str = "1";

/// An expert: one z-vector per matrix of a decomposition.
#[derive(Debug)]
pub struct Expert {
    /// Its name (a domain, usually).
    pub name: String,
    /// Layer name and z-vector (`[rank]`, f32), in the decomposition's order.
    pub z: Vec<(String, Tensor)>,
    /// The fingerprint of the base weights it was trained on.
    pub base_hash: String,
    /// The matrices it covers.
    pub selection: Selection,
    /// How its z-vectors are meant to be composed.
    pub composition: Composition,
    /// Free-form training summary (steps, rewards, validation), kept with the file.
    pub training: serde_json::Value,
}

impl Expert {
    /// Every z equal to `value` (with the reference composition, any constant is the
    /// identity; the reference code starts from 0.1 plus noise).
    pub fn constant(decomposition: &Decomposition, name: &str, value: f64) -> Self {
        Self {
            name: name.to_owned(),
            z: decomposition
                .factors()
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        Tensor::full([f.rank() as i64], value, (Kind::Float, tch::Device::Cpu)),
                    )
                })
                .collect(),
            base_hash: decomposition.base_hash().to_owned(),
            selection: decomposition.selection().clone(),
            composition: Composition::Reference,
            training: serde_json::Value::Null,
        }
    }

    /// The reference code's initialisation: `z ~ mean + std * N(0, 1)` (its defaults are
    /// 0.1 and 0.01). The normals come from this call's own xoshiro256++ generator seeded
    /// with `seed` (Box-Muller, in f64): libtorch's global generator would be shared with
    /// every other thread, so two experts made at once (parallel tests, parallel workers)
    /// could swap or mix their draws.
    pub fn random(
        decomposition: &Decomposition,
        name: &str,
        mean: f64,
        std: f64,
        seed: i64,
    ) -> Self {
        let mut normals = StandardNormals::seeded(seed as u64);
        let mut expert = Self::constant(decomposition, name, mean);
        for (_, z) in &mut expert.z {
            let values: Vec<f32> = (0..z.numel())
                .map(|_| (mean + std * normals.next()) as f32)
                .collect();
            *z = Tensor::from_slice(&values).view(z.size().as_slice());
        }
        expert
    }

    /// Fails unless this expert fits `decomposition`: same base weights, same matrices,
    /// same lengths.
    pub fn check_compatible(&self, decomposition: &Decomposition) -> Result<()> {
        if self.base_hash != decomposition.base_hash() {
            return Err(Error::Mismatch(format!(
                "expert `{}` was made for base weights {}, this model's are {}",
                self.name,
                self.base_hash,
                decomposition.base_hash()
            )));
        }
        let factors = decomposition.factors();
        if self.z.len() != factors.len() {
            return Err(Error::Mismatch(format!(
                "expert `{}` has {} z-vectors, the decomposition {} matrices",
                self.name,
                self.z.len(),
                factors.len()
            )));
        }
        for ((name, z), f) in self.z.iter().zip(factors) {
            if *name != f.name || z.size() != [f.rank() as i64] {
                return Err(Error::Mismatch(format!(
                    "expert `{}`: z for `{name}` has shape {:?}, the decomposition expects `{}` with {}",
                    self.name,
                    z.size(),
                    f.name,
                    f.rank()
                )));
            }
        }
        Ok(())
    }

    /// Writes the expert as safetensors (`<layer>.z`, f32) with JSON metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let entries = self
            .z
            .iter()
            .map(|(name, z)| StEntry {
                name: format!("{name}.z"),
                dtype: StDtype::F32,
                shape: vec![z.size()[0] as usize],
            })
            .collect();
        let metadata = BTreeMap::from([
            ("format".to_owned(), EXPERT_FORMAT.to_owned()),
            ("version".to_owned(), EXPERT_VERSION.to_owned()),
            ("name".to_owned(), self.name.clone()),
            ("base_hash".to_owned(), self.base_hash.clone()),
            (
                "selection".to_owned(),
                serde_json::to_string(&self.selection).unwrap_or_default(),
            ),
            (
                "composition".to_owned(),
                serde_json::to_string(&self.composition).unwrap_or_default(),
            ),
            ("training".to_owned(), self.training.to_string()),
        ]);
        let file_error = |e: bitnet_dequant::Error| Error::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut writer =
            StreamingSafetensors::create(path, entries, &metadata).map_err(file_error)?;
        for (name, z) in &self.z {
            let values =
                Vec::<f32>::try_from(z.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu))?;
            writer
                .write_tensor(&format!("{name}.z"), bitnet_dequant::io::f32_bytes(&values))
                .map_err(file_error)?;
        }
        writer.finish().map_err(file_error)
    }

    /// Reads an expert written by [`Expert::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let metadata = crate::FileMetadata::read(path, EXPERT_FORMAT, EXPERT_VERSION)?;
        let mut z: Vec<(String, Tensor)> = Tensor::read_safetensors(path)?
            .into_iter()
            .map(|(name, t)| (name.trim_end_matches(".z").to_owned(), t))
            .collect();
        z.sort_by_key(|(name, _)| layer_order(name));
        Ok(Self {
            name: metadata.field("name")?,
            z,
            base_hash: metadata.field("base_hash")?,
            selection: metadata.parse("selection")?,
            composition: metadata.parse("composition")?,
            training: metadata.parse("training")?,
        })
    }

    /// Imports the reference implementation's legacy layout: HF parameter name
    /// (`model.layers.0.mlp.gate_proj.weight`) to raw (pre-sigmoid) z. Every matrix of
    /// the decomposition must be present.
    pub fn import_reference(
        decomposition: &Decomposition,
        name: &str,
        parameters: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        let mut expert = Self::constant(decomposition, name, 0.0);
        for (layer, z) in &mut expert.z {
            let key = format!("{layer}.weight");
            let found = parameters
                .get(&key)
                .ok_or_else(|| Error::Mismatch(format!("reference expert has no `{key}`")))?;
            if found.size() != z.size() {
                return Err(Error::Mismatch(format!(
                    "reference z for `{key}` has shape {:?}, expected {:?}",
                    found.size(),
                    z.size()
                )));
            }
            *z = found.to_kind(Kind::Float).to_device(tch::Device::Cpu);
        }
        Ok(expert)
    }
}

/// Standard normal draws from a private seeded generator (Box-Muller on xoshiro256++).
struct StandardNormals {
    rng: rand_xoshiro::Xoshiro256PlusPlus,
    spare: Option<f64>,
}

impl StandardNormals {
    fn seeded(seed: u64) -> Self {
        use rand_core::SeedableRng;
        Self {
            rng: rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed),
            spare: None,
        }
    }

    /// A uniform in (0, 1]: never 0, so its logarithm is finite.
    fn uniform_open(&mut self) -> f64 {
        use rand_core::Rng as _;
        ((self.rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn next(&mut self) -> f64 {
        if let Some(value) = self.spare.take() {
            return value;
        }
        let radius = (-2.0 * self.uniform_open().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.uniform_open();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_are_seeded_and_standard() {
        let draw = |seed| {
            let mut normals = StandardNormals::seeded(seed);
            (0..100_000).map(|_| normals.next()).collect::<Vec<f64>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a[..10], draw(8)[..10]);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        assert!(a.iter().all(|x| x.is_finite()));
    }
}
