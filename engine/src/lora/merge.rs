//! Deltas of each LoRA format and their merge into the model's weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::file::{LoraFile, LoraFormat, Module};
use super::keys::{self, Part};
use crate::error::{EngineError, Result};
use crate::nets::weights::Weights;
use crate::protocol::LoraReport;

fn part(m: &Module, p: Part) -> Result<&Tensor> {
    m.parts
        .get(&p)
        .ok_or_else(|| EngineError::Other(format!("LoRA module {} lacks its {p:?} tensor", m.key)))
}

fn as_matrix(t: &Tensor) -> Result<Tensor> {
    let d = t.dims();
    let rows = d.first().copied().unwrap_or(1);
    Ok(t.reshape((rows, t.elem_count() / rows.max(1)))?)
}

/// `kron(a, b)` for a 2-D `a` and a 2-D or 4-D `b`.
fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, n) = a.dims2()?;
    let bd = b.dims().to_vec();
    let (p, q) = (bd[0], bd[1]);
    let rest: Vec<usize> = bd[2..].to_vec();
    let mut a_shape = vec![m, 1, n, 1];
    a_shape.extend(rest.iter().map(|_| 1));
    let mut b_shape = vec![1, p, 1, q];
    b_shape.extend(rest.iter().copied());
    let prod = a.reshape(a_shape)?.broadcast_mul(&b.reshape(b_shape)?)?;
    let mut out = vec![m * p, n * q];
    out.extend(rest);
    Ok(prod.reshape(out)?)
}

/// LyCORIS' Tucker rebuild `einsum("i j k l, j r, i p -> p r k l", t, b, a)`: a core
/// `t [rank, rank, kh, kw]` with factors `a [rank, out]`, `b [rank, in]` -> `[out, in, kh, kw]`.
fn tucker(t: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (r1, r2, kh, kw) = t.dims4()?;
    let out = a.dim(1)?;
    let inn = b.dim(1)?;
    let x = a.t()?.matmul(&t.reshape((r1, r2 * kh * kw))?)?; // [out, r2*kh*kw]
    let x = x.reshape((out, r2, kh, kw))?.permute((0, 2, 3, 1))?.reshape((out * kh * kw, r2))?;
    let y = x.matmul(b)?; // [out*kh*kw, in]
    Ok(y.reshape((out, kh, kw, inn))?.permute((0, 3, 1, 2))?.contiguous()?)
}

/// The scaled weight delta of one module, shaped like `target` (f32, on `device`).
pub fn delta(m: &Module, target: &[usize], default_alpha: Option<f32>, device: &Device) -> Result<Tensor> {
    let on = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(DType::F32)?) };
    let format = m
        .format()
        .ok_or_else(|| EngineError::Other(format!("LoRA module {} has no recognised tensors", m.key)))?;
    let rank = m.rank().unwrap_or(1).max(1) as f32;
    let alpha = m.alpha().or(default_alpha);
    let numel: usize = target.iter().product();
    let (d, scale) = match format {
        LoraFormat::LoRa => {
            let up = as_matrix(&on(part(m, Part::Up)?)?)?;
            let down = on(part(m, Part::Down)?)?;
            let d = match m.parts.get(&Part::Mid) {
                None => up.matmul(&as_matrix(&down)?)?,
                Some(mid) => {
                    // Tucker (LoCon with lora_mid): d[o,i,h,w] = sum up[o,a] mid[a,b,h,w] down[b,i].
                    let mid = on(mid)?;
                    let (r, r2, kh, kw) = mid.dims4()?;
                    let down = as_matrix(&down)?; // [r2, in]
                    let x = mid.permute((0, 2, 3, 1))?.reshape((r * kh * kw, r2))?.matmul(&down)?; // [r*kh*kw, in]
                    let inn = down.dim(1)?;
                    let x = x.reshape((r, kh * kw * inn))?;
                    let y = up.matmul(&x)?; // [out, kh*kw*in]
                    y.reshape((up.dim(0)?, kh, kw, inn))?.permute((0, 3, 1, 2))?.contiguous()?
                }
            };
            (d, alpha.map_or(1.0, |a| a / rank))
        }
        LoraFormat::LoHa => {
            let (w1a, w1b) = (on(part(m, Part::HadaW1A)?)?, on(part(m, Part::HadaW1B)?)?);
            let (w2a, w2b) = (on(part(m, Part::HadaW2A)?)?, on(part(m, Part::HadaW2B)?)?);
            let (w1, w2) = match (m.parts.get(&Part::HadaT1), m.parts.get(&Part::HadaT2)) {
                (Some(t1), Some(t2)) => (
                    tucker(&on(t1)?, &w1a, &as_matrix(&w1b)?)?,
                    tucker(&on(t2)?, &w2a, &as_matrix(&w2b)?)?,
                ),
                _ => (w1a.matmul(&as_matrix(&w1b)?)?, w2a.matmul(&as_matrix(&w2b)?)?),
            };
            ((w1 * w2)?, alpha.map_or(1.0, |a| a / rank))
        }
        LoraFormat::LoKr => {
            let factored = m.parts.contains_key(&Part::LokrW1A) || m.parts.contains_key(&Part::LokrW2A);
            let w1 = match m.parts.get(&Part::LokrW1) {
                Some(w) => on(w)?,
                None => on(part(m, Part::LokrW1A)?)?.matmul(&on(part(m, Part::LokrW1B)?)?)?,
            };
            let w2 = match (m.parts.get(&Part::LokrW2), m.parts.get(&Part::LokrT2)) {
                (Some(w), _) => on(w)?,
                (None, Some(t2)) => tucker(&on(t2)?, &on(part(m, Part::LokrW2A)?)?, &as_matrix(&on(part(m, Part::LokrW2B)?)?)?)?,
                (None, None) => {
                    let (a, b) = (on(part(m, Part::LokrW2A)?)?, on(part(m, Part::LokrW2B)?)?);
                    let (out2, in2) = (a.dim(0)?, target.get(1).copied().unwrap_or(1) / w1.dim(1)?);
                    let prod = a.matmul(&as_matrix(&b)?)?;
                    if target.len() == 4 {
                        prod.reshape((out2, in2, target[2], target[3]))?
                    } else {
                        prod
                    }
                }
            };
            // Scaled by alpha / rank only when a factor is rank-decomposed (as LyCORIS does).
            let scale = if factored { alpha.map_or(1.0, |a| a / rank) } else { 1.0 };
            (kron(&w1, &w2)?, scale)
        }
    };
    if d.elem_count() != numel {
        return Err(EngineError::ShapeMismatch {
            name: m.key.clone(),
            found: d.dims().to_vec(),
            expected: target.to_vec(),
        });
    }
    Ok((d.reshape(target)? * scale as f64)?)
}

/// Merges `loras` (file, UNet strength, text-encoder strength) into the weights they touch.
/// Returns the replacement tensors (model dtype, on the model's device) and one report per
/// file. Fails, touching nothing, when a LoRA matches no layer or a shape does not fit.
pub fn merge_into(
    base: &Weights,
    table: &HashMap<String, String>,
    loras: &[(&LoraFile, f32, f32)],
) -> Result<(HashMap<String, Tensor>, Vec<LoraReport>)> {
    let device = base.device();
    let device = &device;
    let mut sums: HashMap<String, Tensor> = HashMap::new();
    let mut magnitudes: Vec<(String, Tensor)> = vec![];
    let mut reports = vec![];
    for (file, unet_strength, text_strength) in loras {
        let mut report = LoraReport {
            name: file.name.clone(),
            total: file.modules.len(),
            ..Default::default()
        };
        for m in file.modules.values() {
            let Some(target) = table.get(&keys::normalise(&m.key)) else {
                report.unmatched.push(m.key.clone());
                continue;
            };
            let w0 = base.shape(target)?;
            let strength = if target.starts_with("unet.") {
                *unet_strength
            } else {
                *text_strength
            };
            let d = delta(m, w0, file.peft_alpha, device).map_err(|e| match e {
                EngineError::ShapeMismatch { found, expected, .. } => EngineError::Other(format!(
                    "LoRA '{}' does not fit this model: layer {} has {found:?} in the LoRA but {expected:?} in the model (a LoRA for another model family?)",
                    file.name, m.key
                )),
                other => other,
            })?;
            let scaled = (d * strength as f64)?;
            let sum = match sums.remove(target) {
                Some(s) => (s + scaled)?,
                None => scaled,
            };
            sums.insert(target.clone(), sum);
            if let Some(mag) = m.parts.get(&Part::Magnitude) {
                magnitudes.push((target.clone(), mag.to_device(device)?.to_dtype(DType::F32)?));
            }
            report.applied += 1;
        }
        report.unmatched.extend(file.stray.iter().cloned());
        if report.applied == 0 {
            return Err(EngineError::Other(format!(
                "LoRA '{}' matches none of this model's layers: it was made for {} (its layers: {})",
                file.name,
                file.target_family(),
                file.modules.keys().take(2).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        reports.push(report);
    }
    let mut out = HashMap::new();
    for (name, sum) in sums {
        // A quantized W0 is dequantized here: the patched layer is dense in the merged copy,
        // the base keeps its blocks.
        let w0 = base.get(&name)?;
        let mut w = (w0.to_dtype(DType::F32)? + sum)?;
        for (_, mag) in magnitudes.iter().filter(|(t, _)| *t == name) {
            // DoRA: keep the direction of W0 + delta, take the magnitude from the file
            // (per output row for [out] / [out, 1] magnitudes, per input column for [1, in]).
            let rows = w.dim(0)?;
            let per_row = mag.dims().first() == Some(&rows);
            let m2 = as_matrix(&w)?;
            let norm = if per_row {
                m2.sqr()?.sum_keepdim(1)?.sqrt()?
            } else {
                m2.sqr()?.sum_keepdim(0)?.sqrt()?
            };
            let mag2 = if per_row {
                mag.reshape((rows, 1))?
            } else {
                mag.reshape((1, m2.dim(1)?))?
            };
            w = m2.broadcast_mul(&mag2.broadcast_div(&norm)?)?.reshape(w.dims())?;
        }
        out.insert(name, w.to_dtype(w0.dtype())?);
    }
    Ok((out, reports))
}
