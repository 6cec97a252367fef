//! SVF on a tiny Llama (the lm parity fixture): identities, factorized = merged,
//! gradients, expert files, the decomposition cache, accounting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lm::CausalLm;
use svf::{Composition, Decomposition, Expert, Mixture, Selection, Svf};
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/llama")
}

fn model() -> CausalLm {
    CausalLm::load(&fixture(), Device::Cpu, Kind::Float).unwrap()
}

fn ids() -> Tensor {
    Tensor::from_slice(&[5i64, 9, 14, 3, 27, 33, 8, 19, 2, 40]).view([2, 5])
}

fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_uniform_expert_reproduces_the_base_model() {
    let mut model = model();
    let base = model.forward(&ids(), None, None).unwrap();
    for selection in [Selection::mlp(), Selection::mlp_and_attention()] {
        let decomposition = Decomposition::compute(&mut model, &selection, false).unwrap();
        let expert = Expert::constant(&decomposition, "uniform", 0.1);
        let mut svf = Svf::install(&mut model, decomposition, Composition::Reference).unwrap();
        svf.set_experts(&[&expert], &Mixture::uniform(1)).unwrap();
        svf.refresh().unwrap();
        let factorized = model.forward(&ids(), None, None).unwrap();
        assert!(
            relative_difference(&factorized, &base) < 1e-5,
            "{selection:?}"
        );
        svf.uninstall(&mut model).unwrap();
        let restored = model.forward(&ids(), None, None).unwrap();
        assert_eq!(relative_difference(&restored, &base), 0.0);
    }
}

#[test]
fn factorized_and_merged_agree_and_mixtures_change_the_model() {
    let mut model = model();
    let base = model.forward(&ids(), None, None).unwrap();
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    let a = Expert::random(&decomposition, "a", 0.1, 2.0, 1);
    let b = Expert::random(&decomposition, "b", -0.5, 2.0, 2);
    let mut svf = Svf::install(&mut model, decomposition, Composition::Reference).unwrap();
    for mixture in [
        Mixture::per_expert(&[0.3, 0.7]),
        Mixture::PerMatrix(Tensor::rand([2, 6], (Kind::Float, Device::Cpu))),
    ] {
        svf.set_experts(&[&a, &b], &mixture).unwrap();
        svf.refresh().unwrap();
        let factorized = model.forward(&ids(), None, None).unwrap();
        assert!(
            relative_difference(&factorized, &base) > 1e-3,
            "the experts do something"
        );
        svf.merge(&mut model).unwrap();
        let merged = model.forward(&ids(), None, None).unwrap();
        let difference = relative_difference(&factorized, &merged);
        assert!(difference < 1e-5, "factorized vs merged: {difference:e}");
        svf.unmerge(&mut model).unwrap();
        let again = model.forward(&ids(), None, None).unwrap();
        assert!(relative_difference(&again, &factorized) < 1e-6);
    }
}

#[test]
fn the_paper_composition_with_unit_z_is_the_identity() {
    let mut model = model();
    let base = model.forward(&ids(), None, None).unwrap();
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    let ones = Expert::constant(&decomposition, "ones", 1.0);
    let mut svf = Svf::install(&mut model, decomposition, Composition::Paper).unwrap();
    svf.set_experts(&[&ones], &Mixture::uniform(1)).unwrap();
    svf.refresh().unwrap();
    assert!(relative_difference(&model.forward(&ids(), None, None).unwrap(), &base) < 1e-5);
    // z = 0.5 halves every adapted matrix: the model changes.
    let half = Expert::constant(svf.decomposition(), "half", 0.5);
    svf.set_experts(&[&half], &Mixture::uniform(1)).unwrap();
    svf.refresh().unwrap();
    assert!(relative_difference(&model.forward(&ids(), None, None).unwrap(), &base) > 1e-3);
}

#[test]
fn gradients_reach_z_and_alpha_and_match_finite_differences() {
    let mut model = model();
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    let mut a = Expert::random(&decomposition, "a", 0.1, 1.0, 3);
    let b = Expert::random(&decomposition, "b", 0.1, 1.0, 4);
    a.z[2].1 = a.z[2].1.set_requires_grad(true);
    let alphas = Tensor::from_slice(&[0.4f32, 0.6]).set_requires_grad(true);
    let mut svf = Svf::install(&mut model, decomposition, Composition::Reference).unwrap();
    tch::manual_seed(9);
    let weights = Tensor::randn([2, 5, 64], (Kind::Float, Device::Cpu));
    let loss = |svf: &mut Svf, a: &Expert, alphas: &Tensor, model: &CausalLm| -> Tensor {
        svf.set_experts(&[a, &b], &Mixture::PerExpert(alphas.shallow_clone()))
            .unwrap();
        svf.refresh().unwrap();
        (model.forward(&ids(), None, None).unwrap() * &weights).sum(Kind::Float)
    };
    let value = loss(&mut svf, &a, &alphas, &model);
    value.backward();
    let z_grad = a.z[2].1.grad().double_value(&[5]);
    let alpha_grad = alphas.grad().double_value(&[1]);
    assert!(z_grad != 0.0 && alpha_grad != 0.0);

    let h = 1e-2;
    let shifted = |delta_z: f64, delta_alpha: f64, svf: &mut Svf| -> f64 {
        let _guard = tch::no_grad_guard();
        let z = a.z[2].1.detach().copy();
        let _ = z.get(5).f_add_scalar_(delta_z).unwrap();
        let mut moved = Expert::constant(svf.decomposition(), "moved", 0.0);
        for (i, (_, slot)) in moved.z.iter_mut().enumerate() {
            *slot = if i == 2 {
                z.shallow_clone()
            } else {
                a.z[i].1.detach()
            };
        }
        let alphas = alphas.detach().copy();
        let _ = alphas.get(1).f_add_scalar_(delta_alpha).unwrap();
        loss(svf, &moved, &alphas, &model).double_value(&[])
    };
    let numeric_z = (shifted(h, 0.0, &mut svf) - shifted(-h, 0.0, &mut svf)) / (2.0 * h);
    let numeric_alpha = (shifted(0.0, h, &mut svf) - shifted(0.0, -h, &mut svf)) / (2.0 * h);
    let close = |a: f64, b: f64| (a - b).abs() <= 0.05 * a.abs().max(b.abs()) + 1e-3;
    assert!(
        close(z_grad, numeric_z),
        "dL/dz: autograd {z_grad}, finite differences {numeric_z}"
    );
    assert!(
        close(alpha_grad, numeric_alpha),
        "dL/dalpha: autograd {alpha_grad}, finite differences {numeric_alpha}"
    );
}

#[test]
fn experts_round_trip_and_refuse_another_base() {
    let dir = scratch("experts");
    let mut model = model();
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    let mut expert = Expert::random(&decomposition, "arithmetic", 0.1, 0.01, 5);
    expert.training = serde_json::json!({"steps": 12, "validation_accuracy": 0.5});
    let path = dir.join("arithmetic.safetensors");
    expert.save(&path).unwrap();
    let loaded = Expert::load(&path).unwrap();
    assert_eq!(loaded.name, "arithmetic");
    assert_eq!(loaded.training["steps"], 12);
    assert_eq!(loaded.z.len(), expert.z.len());
    for ((n1, z1), (n2, z2)) in loaded.z.iter().zip(&expert.z) {
        assert_eq!(n1, n2);
        assert!(z1.equal(z2));
    }
    loaded.check_compatible(&decomposition).unwrap();

    // A different base (one weight changed) has another fingerprint.
    let mut other = CausalLm::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    {
        let layers = other.linear_layers_mut();
        let _ = tch::no_grad(|| layers[4].weight.get(0).get(0).fill_(0.123));
    }
    let other_decomposition = Decomposition::compute(&mut other, &Selection::mlp(), false).unwrap();
    let message = loaded
        .check_compatible(&other_decomposition)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("arithmetic") && message.contains("base weights"),
        "{message}"
    );

    // Import of the reference implementation's layout.
    let reference: HashMap<String, Tensor> = expert
        .z
        .iter()
        .map(|(name, z)| (format!("{name}.weight"), z.copy()))
        .collect();
    let imported = Expert::import_reference(&decomposition, "imported", &reference).unwrap();
    assert!(imported.z[0].1.equal(&expert.z[0].1));
    let mut missing: HashMap<String, Tensor> = reference
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    missing.remove("model.layers.1.mlp.down_proj.weight");
    assert!(Expert::import_reference(&decomposition, "x", &missing).is_err());

    std::fs::write(dir.join("bad.safetensors"), b"not safetensors").unwrap();
    let message = Expert::load(&dir.join("bad.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("bad.safetensors"), "{message}");

    // An expert is not a decomposition, and a field left out is named.
    expert.save(&dir.join("expert.safetensors")).unwrap();
    let message = Decomposition::load(&dir.join("expert.safetensors"))
        .err()
        .expect("an expert file is refused as a decomposition")
        .to_string();
    assert!(
        message.contains("expert.safetensors") && message.contains("not a"),
        "{message}"
    );
    let metadata: HashMap<String, String> = [("format", "svf-expert"), ("version", "1")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let no_tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    let bytes = safetensors::serialize(no_tensors, Some(metadata)).unwrap();
    std::fs::write(dir.join("incomplete.safetensors"), bytes).unwrap();
    let message = Expert::load(&dir.join("incomplete.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("incomplete.safetensors") && message.contains("`name` is missing"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_decomposition_cache_is_reused_only_when_unchanged() {
    let dir = scratch("cache");
    let cache = dir.join("svd.safetensors");
    let mut model = model();
    let first = Decomposition::load_or_compute(&mut model, &Selection::mlp(), &cache).unwrap();
    let written = std::fs::metadata(&cache).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = Decomposition::load_or_compute(&mut model, &Selection::mlp(), &cache).unwrap();
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        written,
        "reused, not rewritten"
    );
    assert_eq!(first.base_hash(), second.base_hash());
    for (a, b) in first.factors().iter().zip(second.factors()) {
        assert_eq!(a.name, b.name);
        assert!(a.u.equal(&b.u) && a.s.equal(&b.s) && a.v.equal(&b.v));
    }
    // Another selection: recomputed and rewritten.
    let wider = Decomposition::load_or_compute(&mut model, &Selection::mlp_and_attention(), &cache)
        .unwrap();
    assert_eq!(wider.factors().len(), 14);
    assert_ne!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        written
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn z_parameters_are_far_fewer_than_lora_rank_16() {
    let mut model = model();
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    // 2 layers x (gate [64,32], up [64,32], down [32,64]): rank 32 each.
    assert_eq!(
        svf::parameter_counts(&decomposition, 16),
        (6 * 32, 6 * 16 * (64 + 32))
    );
}

#[test]
fn a_merged_export_loads_as_an_ordinary_model() {
    let dir = scratch("export");
    for base in ["llama", "bitnet"] {
        let base_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lm/tests/fixtures")
            .join(base);
        let mut model = CausalLm::load(&base_dir, Device::Cpu, Kind::Float).unwrap();
        // Compare with the float forward: the export has no BitLinear layers.
        model.set_activation_quantization(false);
        let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
        let expert = Expert::random(&decomposition, "e", 0.0, 1.5, 11);
        let mut svf = Svf::install(&mut model, decomposition, Composition::Reference).unwrap();
        svf.set_experts(&[&expert], &Mixture::uniform(1)).unwrap();
        svf.refresh().unwrap();
        let adapted = model.forward(&ids(), None, None).unwrap();
        let out = dir.join(base);
        svf.export_merged(&base_dir, &out).unwrap();
        let exported = CausalLm::load(&out, Device::Cpu, Kind::Float).unwrap();
        let difference =
            relative_difference(&exported.forward(&ids(), None, None).unwrap(), &adapted);
        assert!(difference < 1e-5, "{base}: {difference:e}");
        let config = std::fs::read_to_string(out.join("config.json")).unwrap();
        assert!(!config.contains("quantization_config"));
        assert!(out.join("tokenizer.json").is_file());
        // Exporting onto an existing folder is refused.
        assert!(svf.export_merged(&base_dir, &out).is_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn composition_matches_the_numpy_reference() {
    // scripts/make_composition_reference.py: numpy's SVD and composition, two experts.
    let reference: HashMap<String, Tensor> = Tensor::read_safetensors(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/composition.safetensors"),
    )
    .unwrap()
    .into_iter()
    .collect();
    let mut model = model();
    let alphas = Vec::<f64>::try_from(reference["alphas"].to_kind(Kind::Double)).unwrap();
    for (composition, suffix) in [
        (Composition::Reference, "reference"),
        (Composition::Paper, "paper"),
    ] {
        let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), true).unwrap();
        let mut experts = Vec::new();
        for k in 0..2 {
            let mut expert = Expert::constant(&decomposition, &format!("e{k}"), 0.0);
            for (name, z) in &mut expert.z {
                *z = reference[&format!("{name}.z{k}")].shallow_clone();
            }
            experts.push(expert);
        }
        let mut svf = Svf::install(&mut model, decomposition, composition).unwrap();
        svf.set_experts(&[&experts[0], &experts[1]], &Mixture::per_expert(&alphas))
            .unwrap();
        for (name, weight) in svf.merged_weights() {
            let expected = &reference[&format!("{name}.{suffix}")];
            let difference = relative_difference(&weight, expected);
            assert!(difference < 1e-5, "{suffix} {name}: {difference:e}");
        }
        svf.uninstall(&mut model).unwrap();
    }
}
