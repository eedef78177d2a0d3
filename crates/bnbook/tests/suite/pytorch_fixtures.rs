//! What the three PyTorch parity tests share: reading a file that
//! `scripts/gen_fixtures.py` wrote into `tests/fixtures/`, and turning its
//! flat row-major lists back into arrays.

use bnbook::ndarray::{ArrayD, IxDyn};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A fixture file: who wrote it and its cases (each test has its own case
/// type; the versions recorded beside them are not read).
#[derive(Deserialize)]
pub struct Fixtures<C> {
    /// The script that wrote the file, `scripts/gen_fixtures.py`.
    pub generator: String,
    /// The cases, in the order the script writes them.
    pub cases: Vec<C>,
}

/// `tests/fixtures/<file>`, parsed.
pub fn read<C: DeserializeOwned>(file: &str) -> Fixtures<C> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture file"))
        .expect("valid fixture JSON")
}

/// A fixture's flat list of values as an array of `shape`.
pub fn array(shape: &[usize], values: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).expect("fixture sizes match shapes")
}
