//! Checkpoints: one safetensors file holding the parameters, the best parameters, the
//! optimiser's moments and Grokfast EMAs, with the training state as JSON metadata.
//! Written to a temporary file, synced and renamed; never written with a non-finite
//! value.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tch::{Kind, Tensor};

use crate::optim::AdamW;
use crate::trainer::{TrainingState, named};
use crate::{Error, Result};

const FORMAT: &str = "reinforce-kl-checkpoint";

fn file_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn bytes_of(tensor: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
    match tensor.kind() {
        Kind::Float => {
            let values = Vec::<f32>::try_from(tensor.flatten(0, -1))?;
            Ok((
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        }
        Kind::Double => {
            let values = Vec::<f64>::try_from(tensor.flatten(0, -1))?;
            Ok((
                Dtype::F64,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        }
        other => Err(Error::Config(format!(
            "checkpoints hold f32 or f64 parameters, found {other:?}"
        ))),
    }
}

/// Writes the checkpoint.
pub fn save(
    path: &Path,
    state: &TrainingState,
    parameters: &[Tensor],
    best: &[Tensor],
    optimizer: &AdamW,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = named("parameter", parameters.iter());
    tensors.extend(named("best", best.iter()));
    tensors.extend(named("adam_first", optimizer.first.iter()));
    tensors.extend(named("adam_second", optimizer.second.iter()));
    for (i, ema) in optimizer.ema.iter().enumerate() {
        if let Some(ema) = ema {
            tensors.insert(format!("grokfast_ema.{i}"), ema.detach().shallow_clone());
        }
    }
    for (name, tensor) in &tensors {
        if !bool::try_from(tensor.isfinite().all()).unwrap_or(false) {
            return Err(file_error(
                path,
                format!("refusing to write: `{name}` holds a non-finite value"),
            ));
        }
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut data = Vec::with_capacity(names.len());
    for name in &names {
        let tensor = &tensors[*name];
        let (dtype, bytes) = bytes_of(tensor)?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        data.push(((*name).clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| file_error(path, e))
        })
        .collect::<Result<_>>()?;
    let metadata = HashMap::from([
        ("format".to_owned(), FORMAT.to_owned()),
        (
            "state".to_owned(),
            serde_json::to_string(state).map_err(|e| file_error(path, e))?,
        ),
    ]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| file_error(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        file_error(path, format!("cannot write: {e}"))
    })
}

/// Reads a checkpoint into the parameters, best parameters and optimiser; returns the
/// training state.
pub fn load(
    path: &Path,
    parameters: &[Tensor],
    best: &mut [Tensor],
    optimizer: &mut AdamW,
) -> Result<TrainingState> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(path, format!("not a valid checkpoint: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(file_error(path, format!("not a {FORMAT} file")));
    }
    let state: TrainingState =
        serde_json::from_str(metadata.get("state").map(String::as_str).unwrap_or(""))
            .map_err(|e| file_error(path, format!("invalid state: {e}")))?;
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
    let take = |name: String, like: &Tensor| -> Result<Tensor> {
        let t = tensors
            .get(&name)
            .ok_or_else(|| file_error(path, format!("`{name}` is missing")))?;
        if t.size() != like.size() {
            return Err(file_error(
                path,
                format!(
                    "`{name}` has shape {:?}, the parameter {:?}",
                    t.size(),
                    like.size()
                ),
            ));
        }
        Ok(t.to_kind(like.kind()).to_device(like.device()))
    };
    let _guard = tch::no_grad_guard();
    for (i, p) in parameters.iter().enumerate() {
        let value = take(format!("parameter.{i}"), p)?;
        p.shallow_clone().copy_(&value);
        best[i] = take(format!("best.{i}"), p)?;
        optimizer.first[i] = take(format!("adam_first.{i}"), p)?;
        optimizer.second[i] = take(format!("adam_second.{i}"), p)?;
        optimizer.ema[i] = tensors
            .get(&format!("grokfast_ema.{i}"))
            .map(|t| t.to_kind(p.kind()).to_device(p.device()));
    }
    optimizer.steps = state.optimizer_steps;
    Ok(state)
}
