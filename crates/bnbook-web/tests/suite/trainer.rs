use bnbook_web::data::{FILE_NAMES, load_subset};
use bnbook_web::trainer::{TrainSettings, Trainer};
use std::path::PathBuf;

fn shipped(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../book/lab/data")
        .join(format!("{name}.gz"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files() -> Vec<Vec<u8>> {
    FILE_NAMES.iter().map(|n| shipped(n)).collect()
}

#[test]
fn the_shipped_subset_loads_and_matches_its_checksums() {
    let f = files();
    let data = load_subset([&f[0], &f[1], &f[2], &f[3]]).unwrap();
    assert_eq!(data.train.pixels.shape(), &[2400, 1, 28, 28]);
    assert_eq!(data.test.labels.len(), 600);
}

#[test]
fn a_modified_file_is_refused() {
    let f = files();
    // swap the test images in for the training images
    let err = load_subset([&f[2], &f[1], &f[2], &f[3]]).unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

#[test]
fn training_lowers_the_loss_with_and_without_batch_norm() {
    let f = files();
    for batch_norm in [false, true] {
        let data = load_subset([&f[0], &f[1], &f[2], &f[3]]).unwrap();
        let settings = TrainSettings {
            batch_norm,
            lr: 0.1,
            batch_size: 64,
            seed: 0,
        };
        let mut trainer = Trainer::new(data, settings).unwrap();
        let first = trainer.step(5).unwrap();
        trainer.step(30).unwrap();
        let last = trainer.step(5).unwrap();
        assert!(
            last.loss < first.loss,
            "BN {batch_norm}: {first:?} -> {last:?}"
        );
        assert_eq!(last.step, 40);
        assert_eq!(last.epoch, 1); // 2400 / 64 = 37 full batches per epoch
        let acc = trainer.test_accuracy().unwrap();
        assert!(acc > 0.5, "BN {batch_norm}: test accuracy {acc}");
    }
}

#[test]
fn bad_training_settings_are_errors() {
    let f = files();
    let data = load_subset([&f[0], &f[1], &f[2], &f[3]]).unwrap();
    let ok = TrainSettings {
        batch_norm: true,
        lr: 0.1,
        batch_size: 64,
        seed: 0,
    };
    for bad in [
        TrainSettings {
            batch_size: 1,
            ..ok
        },
        TrainSettings {
            batch_size: 10_000,
            ..ok
        },
        TrainSettings { lr: -1.0, ..ok },
    ] {
        assert!(Trainer::new(data.clone(), bad).is_err(), "{bad:?}");
    }
}
