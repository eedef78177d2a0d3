//! The book's prose states what the generated runs show ("every
//! normalisation trains faster than none, on average", "layer norm is the
//! weakest", "without batch norm the loss stays at chance in the first
//! epoch"). The runs are seeded and deterministic, so those statements can
//! be held to the files under `book/generated/`: if a change of the code
//! moves the numbers so that a sentence is no longer true, this fails, and
//! the sentence (in `book/norms.md` or `book/lenet-bn.md`) must change with
//! the regenerated files.

use bnbook::train::History;
use std::path::Path;

/// A file under `book/generated/`, parsed from JSON.
fn read<T: serde::de::DeserializeOwned>(relative: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../book/generated")
        .join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn final_loss(h: &History) -> f64 {
    h.last().expect("epochs").loss
}

/// The runs of `model` in the comparison of normalisations.
fn of<'a>(all: &'a [History], model: &str) -> Vec<&'a History> {
    let found: Vec<&History> = all.iter().filter(|h| h.model == model).collect();
    assert!(!found.is_empty(), "no runs of {model}");
    found
}

fn mean(runs: &[&History], metric: impl Fn(&History) -> f64) -> f64 {
    runs.iter().map(|h| metric(h)).sum::<f64>() / runs.len() as f64
}

#[test]
fn the_comparison_of_normalisations_says_what_its_runs_show() {
    let all: Vec<History> = read("norms/accuracy-runs.json");
    let none = of(&all, "lenet-no-norm");
    let normalised = ["lenet-bn-concise", "lenet-ln", "lenet-in", "lenet-gn"];
    let test = |h: &History| h.last().expect("epochs").test_acc;
    let train = |h: &History| h.last().expect("epochs").train_acc;

    // "On average, every normalisation trains faster than none": on the seed
    // means, no normalisation has the highest loss and the lowest accuracies
    for model in normalised {
        let runs = of(&all, model);
        assert!(
            mean(&runs, final_loss) < mean(&none, final_loss),
            "{model}: loss"
        );
        assert!(
            mean(&runs, train) > mean(&none, train),
            "{model}: train acc"
        );
        assert!(mean(&runs, test) > mean(&none, test), "{model}: test acc");
    }
    // "... this holds run by run as well" for BN, IN and GN
    let lowest_none = none
        .iter()
        .map(|h| final_loss(h))
        .fold(f64::INFINITY, f64::min);
    for model in ["lenet-bn-concise", "lenet-in", "lenet-gn"] {
        for h in of(&all, model) {
            assert!(final_loss(h) < lowest_none, "{model} seed {}", h.seed);
        }
    }
    // "For layer norm it does not: one of its seeds ends with a higher
    // training loss than all three runs without normalisation, and its mean
    // test accuracy is ahead by less than the noise margin" (a point or two)
    let highest_none = none.iter().map(|h| final_loss(h)).fold(0.0, f64::max);
    let ln = of(&all, "lenet-ln");
    assert!(ln.iter().any(|h| final_loss(h) > highest_none));
    assert!(mean(&ln, test) - mean(&none, test) <= 0.02);
    // "Batch norm trains fastest by a clear margin": lowest loss, highest
    // training accuracy
    let bn = of(&all, "lenet-bn-concise");
    for model in ["lenet-ln", "lenet-in", "lenet-gn"] {
        let other = of(&all, model);
        assert!(mean(&bn, final_loss) < mean(&other, final_loss), "{model}");
        assert!(mean(&bn, train) > mean(&other, train), "{model}");
    }
    // "Layer norm is the weakest normalisation ... with group norm between
    // it and instance norm" (mean test accuracy)
    let (r#in, gn) = (of(&all, "lenet-in"), of(&all, "lenet-gn"));
    assert!(mean(&r#in, test) > mean(&gn, test) && mean(&gn, test) > mean(&ln, test));
}

#[test]
fn the_lenet_chapter_says_what_its_runs_show() {
    let chance = 10f64.ln(); // the loss of a uniform guess over ten classes
    let no_norm: History = read("lenet-no-norm-seed0.json");
    let plain: History = read("lenet-seed0.json");
    // "Without it, the same network at the same learning rate barely moves
    // in its first epoch (its loss stays near ln 10, chance level)", and
    // d2l's plain LeNet "behaves much like the network without batch norm"
    for h in [&no_norm, &plain] {
        let first = h.history[0].loss;
        assert!(
            (first - chance).abs() < 0.1,
            "{}: first-epoch loss {first}",
            h.model
        );
    }
    // "with batch norm the loss is low after one epoch"
    for seed in 0..3 {
        let bn: History = read(&format!("lenet-bn-seed{seed}.json"));
        assert!(bn.history[0].loss < chance / 2.0, "seed {seed}");
    }
}
