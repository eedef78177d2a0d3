//! The functions and classes the page calls, through `wasm-bindgen`.
//!
//! *Book: chapter "Try it: batch norm in your browser".*
//!
//! Settings go in and results come out as JSON text (the types of
//! [`crate::demo`] and [`crate::trainer`]), so the JavaScript side only
//! draws. Errors become JavaScript exceptions carrying `bnbook`'s message.

use crate::demo::{Demo, ForwardBackwardInput, Settings, forward_backward};
use crate::trainer::{TrainSettings, Trainer};
use wasm_bindgen::prelude::*;

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn to_json(value: &impl serde::Serialize) -> Result<String, JsError> {
    serde_json::to_string(value).map_err(js_error)
}

/// "Normalise a batch" ([`Demo`]).
#[wasm_bindgen]
pub struct BatchNormDemo(Demo);

#[wasm_bindgen]
impl BatchNormDemo {
    /// A fresh layer and input generator seeded with `seed`.
    #[wasm_bindgen(constructor)]
    pub fn new(seed: u32) -> BatchNormDemo {
        BatchNormDemo(Demo::new(u64::from(seed)))
    }

    /// One batch through the layer: `settings` is a [`Settings`] as JSON,
    /// the answer a [`crate::demo::Normalized`] as JSON.
    pub fn normalize(&mut self, settings: &str) -> Result<String, JsError> {
        let settings: Settings = serde_json::from_str(settings).map_err(js_error)?;
        to_json(&self.0.normalize(&settings).map_err(js_error)?)
    }

    /// Running mean 0 and variance 1 again.
    pub fn reset(&mut self) {
        self.0.reset_running_statistics();
    }
}

/// One forward/backward pass ([`forward_backward`]): a
/// [`ForwardBackwardInput`] as JSON in, a
/// [`crate::demo::ForwardBackward`] as JSON out.
#[wasm_bindgen(js_name = forwardBackward)]
pub fn forward_backward_json(input: &str) -> Result<String, JsError> {
    let input: ForwardBackwardInput = serde_json::from_str(input).map_err(js_error)?;
    to_json(&forward_backward(&input).map_err(js_error)?)
}

/// "Train with and without BN" ([`Trainer`]).
#[wasm_bindgen]
pub struct LabTrainer(Trainer);

#[wasm_bindgen]
impl LabTrainer {
    /// A fresh network on the shipped subset: the four `.gz` files as bytes
    /// (training images, training labels, test images, test labels) and a
    /// [`TrainSettings`] as JSON.
    #[wasm_bindgen(constructor)]
    pub fn new(
        train_images: &[u8],
        train_labels: &[u8],
        test_images: &[u8],
        test_labels: &[u8],
        settings: &str,
    ) -> Result<LabTrainer, JsError> {
        let settings: TrainSettings = serde_json::from_str(settings).map_err(js_error)?;
        let data = crate::data::load_subset([train_images, train_labels, test_images, test_labels])
            .map_err(js_error)?;
        Ok(LabTrainer(Trainer::new(data, settings).map_err(js_error)?))
    }

    /// `steps` SGD steps; a [`crate::trainer::Progress`] as JSON.
    pub fn step(&mut self, steps: usize) -> Result<String, JsError> {
        to_json(&self.0.step(steps).map_err(js_error)?)
    }

    /// Accuracy on the shipped test images (evaluation mode).
    #[wasm_bindgen(js_name = testAccuracy)]
    pub fn test_accuracy(&mut self) -> Result<f64, JsError> {
        self.0.test_accuracy().map_err(js_error)
    }
}
