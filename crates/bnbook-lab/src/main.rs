//! `bnbook`: train and time the book's models from the command line.
//!
//! ```text
//! bnbook train --model lenet-bn --epochs 10 --seed 0 --json out.json --svg curves.svg
//! bnbook bench --model lenet-bn
//! ```

use bnbook::data::{FashionMnist, LoadOptions};
use bnbook::models::ModelKind;
use bnbook::nn::MIN_BATCH_WITH_BATCH_NORM;
use bnbook::train::{EpochRecord, History, TrainConfig, train_model};
use bnbook_lab::compare::CompareConfig;
use bnbook_lab::dynamics::DynamicsConfig;
use bnbook_lab::exercises::ExercisesConfig;
use bnbook_lab::figures::FiguresConfig;
use bnbook_lab::inference::InferenceConfig;
use bnbook_lab::report::plural;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Batch normalization, from scratch in Rust: train and time the models of
/// the book on Fashion-MNIST.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on Fashion-MNIST and report loss and accuracy per epoch.
    Train(TrainArgs),
    /// Time training steps and evaluation passes of a model.
    Bench(BenchArgs),
    /// Regenerate every figure, table and number of the LeNet and concise-BN
    /// chapters (trains all their models; how long the last run took is in
    /// book/generated/run-time.md).
    Figures(FiguresArgs),
    /// Regenerate the figures and tables of the chapter comparing batch,
    /// layer, instance and group norm (invariances, timing, accuracy per
    /// normalisation, batch-size sweep; the last run's duration is in
    /// book/generated/norms/run-time.md).
    Norms(NormsArgs),
    /// Regenerate the tables of the measured exercise answers (bias gradient
    /// before BN, fixed γ and β, BN in some layers only, momentum, group
    /// counts, evaluation in training mode; the last run's duration is in
    /// book/generated/exercises/run-time.md).
    Exercises(ExercisesArgs),
    /// Regenerate the figures and tables of the chapter "What batch norm does
    /// to training" (learning-rate sweep, activations, gradients, noisy BN,
    /// the loss along the gradient, dropout, longer runs; the last run's
    /// duration is in book/generated/dynamics/run-time.md).
    Dynamics(DynamicsArgs),
    /// Regenerate the figures and tables of the chapter on batch norm at
    /// inference and with small batches (momentum and precise statistics,
    /// evaluation pitfalls, folding, small-batch remedies, synchronised BN;
    /// the last run's duration is in book/generated/inference/run-time.md).
    Inference(InferenceArgs),
    /// Write the Fashion-MNIST subset of the browser lab (the first 2400
    /// training and 600 test images, 16 grey levels, gzip'd IDX files and
    /// SHA256SUMS) into book/lab/data.
    WebData(WebDataArgs),
}

#[derive(Args)]
struct WebDataArgs {
    /// Output directory.
    #[arg(long, default_value = bnbook_lab::web_data::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ExercisesArgs {
    /// Output directory.
    #[arg(long, default_value = bnbook_lab::exercises::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Epochs per training run.
    #[arg(long, default_value_t = ExercisesConfig::default().epochs)]
    epochs: usize,
    /// Seeds of every trained network, comma-separated.
    #[arg(long, default_value_t = List(ExercisesConfig::default().seeds))]
    seeds: List<u64>,
    /// Use only the first N training and test examples (60000 uses all).
    #[arg(long, default_value_t = bnbook_lab::exercises::DEFAULT_LIMIT)]
    limit: usize,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for matrix products and element-wise loops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct DynamicsArgs {
    /// Output directory.
    #[arg(long, default_value = bnbook_lab::dynamics::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Seeds of every experiment, comma-separated.
    #[arg(long, default_value_t = List(DynamicsConfig::default().seeds))]
    seeds: List<u64>,
    /// Use only the first N training and test examples in every run.
    #[arg(long)]
    limit: Option<usize>,
    /// Epochs of the traced, noisy-BN and dropout runs.
    #[arg(long, default_value_t = DynamicsConfig::default().epochs)]
    epochs: usize,
    /// Learning rates of the sweep, comma-separated.
    #[arg(long, default_value_t = List(DynamicsConfig::default().learning_rates))]
    learning_rates: List<f32>,
    /// Epochs of every run of the learning-rate sweep.
    #[arg(long, default_value_t = DynamicsConfig::default().sweep_epochs)]
    sweep_epochs: usize,
    /// Epochs of the longer runs (at least --epochs).
    #[arg(long, default_value_t = DynamicsConfig::default().long_epochs)]
    long_epochs: usize,
    /// Factors on Xavier's initial weights, comma-separated (must include 1).
    #[arg(long, default_value_t = List(DynamicsConfig::default().weight_scales))]
    weight_scales: List<f32>,
    /// Recorded steps per epoch in the traced runs.
    #[arg(long, default_value_t = DynamicsConfig::default().records_per_epoch)]
    records_per_epoch: usize,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for matrix products and element-wise loops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct InferenceArgs {
    /// Output directory.
    #[arg(long, default_value = bnbook_lab::inference::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Epochs of the momentum runs.
    #[arg(long, default_value_t = InferenceConfig::default().epochs)]
    epochs: usize,
    /// Seeds of every experiment, comma-separated.
    #[arg(long, default_value_t = List(InferenceConfig::default().seeds))]
    seeds: List<u64>,
    /// Momentum runs: use only the first N training and test examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Training batches of 256 that precise BN averages over.
    #[arg(long, default_value_t = InferenceConfig::default().precise_batches)]
    precise_batches: usize,
    /// Batch sizes of the small-batch sweep, comma-separated.
    #[arg(long, default_value_t = List(InferenceConfig::default().sweep_batch_sizes))]
    sweep_batch_sizes: List<usize>,
    /// Epochs of every sweep and per-worker run.
    #[arg(long, default_value_t = InferenceConfig::default().sweep_epochs)]
    sweep_epochs: usize,
    /// Sweep and per-worker runs: use only the first N training and test examples.
    #[arg(long)]
    sweep_limit: Option<usize>,
    /// Examples per worker when a batch of 256 is split over workers, comma-separated.
    #[arg(long, default_value_t = List(InferenceConfig::default().worker_batch_sizes))]
    worker_batch_sizes: List<usize>,
    /// Workers of the synchronised batch-norm run at batch 256.
    #[arg(long, default_value_t = InferenceConfig::default().sync_workers)]
    sync_workers: usize,
    /// Timed repetitions of each evaluation pass.
    #[arg(long, default_value_t = InferenceConfig::default().timing_repeats)]
    timing_repeats: usize,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for matrix products and element-wise loops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct NormsArgs {
    /// Output directory.
    #[arg(long, default_value = bnbook_lab::compare::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Epochs of the accuracy comparison at batch 256.
    #[arg(long, default_value_t = CompareConfig::default().epochs)]
    epochs: usize,
    /// Seeds of the accuracy comparison, comma-separated.
    #[arg(long, default_value_t = List(CompareConfig::default().seeds))]
    seeds: List<u64>,
    /// Accuracy comparison: use only the first N training and test examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Batch sizes of the sweep, comma-separated.
    #[arg(long, default_value_t = List(CompareConfig::default().sweep_batch_sizes))]
    sweep_batch_sizes: List<usize>,
    /// Epochs of every sweep run.
    #[arg(long, default_value_t = CompareConfig::default().sweep_epochs)]
    sweep_epochs: usize,
    /// Seeds of the sweep, comma-separated.
    #[arg(long, default_value_t = List(CompareConfig::default().sweep_seeds))]
    sweep_seeds: List<u64>,
    /// Sweep: use only the first N training and test examples.
    #[arg(long)]
    sweep_limit: Option<usize>,
    /// Timed repetitions per layer and shape.
    #[arg(long, default_value_t = CompareConfig::default().timing_repeats)]
    timing_repeats: usize,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for matrix products and element-wise loops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct FiguresArgs {
    /// Output directory.
    #[arg(long, default_value = bnbook_lab::figures::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Epochs per training run.
    #[arg(long, default_value_t = FiguresConfig::default().epochs)]
    epochs: usize,
    /// Seeds of the LeNet-BN runs, comma-separated.
    #[arg(long, default_value_t = List(FiguresConfig::default().seeds))]
    seeds: List<u64>,
    /// Use only the first N training and test examples (quick check; the book uses all).
    #[arg(long)]
    limit: Option<usize>,
    /// Timed batches per speed measurement.
    #[arg(long, default_value_t = FiguresConfig::default().bench_batches)]
    bench_batches: usize,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for matrix products and element-wise loops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct Common {
    /// Which network: lenet-bn (scratch BN), lenet-bn-concise (fused BN),
    /// lenet (d2l's plain LeNet), lenet-bn-maxpool, lenet-no-norm (LeNet-BN's
    /// layout without normalisation), lenet-ln, lenet-in, lenet-gn.
    #[arg(long, default_value = "lenet-bn")]
    model: ModelKind,
    /// Threads for matrix products and element-wise loops [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Mini-batch size.
    #[arg(long, default_value_t = d2l().batch_size)]
    batch_size: usize,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// Passes over the training set.
    #[arg(long, default_value_t = d2l().epochs)]
    epochs: usize,
    /// Learning rate [default: d2l's value for the model: 0.9 for lenet, 1.0 for
    /// every other model].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Seed of the initial weights and of the shuffling.
    #[arg(long, default_value_t = d2l().seed)]
    seed: u64,
    /// Use only the first N training and test examples (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Directory with the four Fashion-MNIST files (searched first).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Never download the data (same as BNBOOK_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Write the history (settings and per-epoch metrics) as JSON, updated
    /// after every epoch so an interrupted run keeps its finished epochs.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw loss and accuracies against the epoch as an SVG figure.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Timed batches (after the warm-up batches).
    #[arg(long, default_value_t = bnbook_lab::bench::DEFAULT_BATCHES)]
    batches: usize,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A comma-separated list on the command line (`--seeds 0,1,2`), shown the
/// same way in `--help`'s defaults.
#[derive(Clone, Debug)]
struct List<T>(Vec<T>);

impl<T: std::fmt::Display> std::fmt::Display for List<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&items.join(","))
    }
}

impl<T: std::str::FromStr> std::str::FromStr for List<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(|item| {
                item.trim()
                    .parse()
                    .map_err(|e| format!("`{}` in the list `{s}`: {e}", item.trim()))
            })
            .collect::<Result<_, _>>()
            .map(List)
    }
}

/// The recipe the command's training defaults come from (d2l's: 10 epochs,
/// batch 256, seed 0); the learning rate depends on the model.
fn d2l() -> TrainConfig {
    TrainConfig::d2l(ModelKind::LenetBn)
}

fn main() -> ExitCode {
    restore_sigpipe();
    bnbook_lab::bench::keep_freed_memory();
    let cli = Cli::parse();
    let result = set_threads(cli.command.threads()).and_then(|()| {
        // The whole command runs on a thread of rayon's pool. Outside the
        // pool every parallel loop would be handed to a pool thread and
        // waited for (a wake-up and a sleep per loop, about 3 ms of a 16 ms
        // training step at one thread); inside it, the calling thread works
        // on the loop itself. Same work items, same order of sums: the same
        // numbers either way.
        rayon::scope(|_| run(cli))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `println!` panics when the reader of a pipe has
/// gone (`bnbook train | head -3`). Restoring the default action makes the
/// program end silently instead, as `cat` or `grep` do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any thread exists;
    // resetting a signal to its default action has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

impl Command {
    /// The `--threads` option of the command, if it has one and it was given.
    fn threads(&self) -> Option<usize> {
        match self {
            Command::Train(args) => args.common.threads,
            Command::Bench(args) => args.common.threads,
            Command::Figures(args) => args.threads,
            Command::Norms(args) => args.threads,
            Command::Exercises(args) => args.threads,
            Command::Dynamics(args) => args.threads,
            Command::Inference(args) => args.threads,
            Command::WebData(_) => None,
        }
    }
}

fn set_threads(threads: Option<usize>) -> Result<(), String> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        return Err("--threads must be at least 1".into());
    }
    // SAFETY: called before any other thread exists; matrixmultiply reads
    // the variable when it first multiplies.
    unsafe { std::env::set_var("MATMUL_NUM_THREADS", n.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| format!("cannot set up {n} threads: {e}"))
}

/// Checks, before any work, that an output file can be created at `path`:
/// its directory exists and the path is not itself a directory (`example`
/// is a file name to suggest then). Saves a reader from losing a long run
/// to a typo in `--json` or `--svg`.
fn check_output(flag: &str, path: &Path, example: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{flag} {}: the directory {} does not exist; create it first or choose another path",
            path.display(),
            dir.display()
        ));
    }
    if path.is_dir()
        || path
            .as_os_str()
            .to_string_lossy()
            .ends_with(std::path::MAIN_SEPARATOR)
    {
        return Err(format!(
            "{flag} {} names a directory; give a file name, e.g. {}",
            path.display(),
            path.join(example).display()
        ));
    }
    // Create (and remove) the temporary file the final write goes through,
    // so an unwritable place is found now rather than after the run.
    let probe = part_path(path);
    let existed = probe.exists();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&probe)
        .map_err(|e| format!("{flag} {}: cannot write there ({e})", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(&probe);
    }
    Ok(())
}

/// `path` with `.part` appended: where [`write_json`] writes before renaming.
fn part_path(path: &Path) -> PathBuf {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

/// A learning rate as typed: `1`, `0.9`, `1e-4`, `1e30` (not thirty zeros).
fn show_lr(lr: f32) -> String {
    if lr != 0.0 && !(1e-3..1e4).contains(&lr.abs()) {
        format!("{lr:e}")
    } else {
        format!("{lr}")
    }
}

/// Writes `value` as JSON to `path` via a temporary `path.part` renamed
/// into place, so an interrupted write never leaves half a file.
fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    let part = part_path(path);
    std::fs::write(&part, text + "\n")
        .and_then(|()| std::fs::rename(&part, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Train(args) => train(args),
        Command::Figures(args) => figures(args),
        Command::Norms(args) => norms(args),
        Command::Exercises(args) => exercises(args),
        Command::Dynamics(args) => dynamics(args),
        Command::Inference(args) => inference(args),
        Command::WebData(args) => {
            let data = load(args.data_dir.as_ref())?;
            bnbook_lab::web_data::write_subset(&data, &args.out)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Command::Bench(args) => {
            if let Some(path) = &args.json {
                check_output("--json", path, "bench.json")?;
            }
            let report =
                bnbook_lab::bench::bench(args.common.model, args.common.batch_size, args.batches)
                    .map_err(|e| e.to_string())?;
            println!("{report}");
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(())
        }
    }
}

fn train(args: TrainArgs) -> Result<(), String> {
    args.common
        .model
        .check_batch_size(args.common.batch_size)
        .map_err(|e| format!("--batch-size {}: {e}", args.common.batch_size))?;
    if let Some(path) = &args.json {
        check_output("--json", path, "out.json")?;
    }
    if let Some(path) = &args.svg {
        if !path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
        {
            return Err(format!(
                "--svg {} should end in .svg: the figure is written as SVG, e.g. --svg curves.svg",
                path.display()
            ));
        }
        check_output("--svg", path, "curves.svg")?;
    }
    if let (Some(json), Some(svg)) = (&args.json, &args.svg)
        && json == svg
    {
        return Err(format!(
            "--json and --svg both name {}; the figure would overwrite the history, so give two files",
            json.display()
        ));
    }
    let model = args.common.model;
    let mut options = load_options(args.data_dir.as_ref())?;
    if args.offline {
        options.allow_download = false;
    }
    options.show_progress = !args.quiet;
    let data = load_with(&options)?;
    if let Some(place) = options.found_in() {
        println!("data: {} ({})", place.dir.display(), place.origin);
    }
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.common.batch_size,
        lr: args.lr.unwrap_or(model.default_lr()),
        seed: args.seed,
        limit: args.limit,
        progress: !args.quiet,
    };
    config.validate(&data).map_err(|e| e.to_string())?;
    let (train_examples, test_examples) =
        (config.train_examples(&data), config.test_examples(&data));
    println!(
        "training {model} for {}: lr {}, batch {}, seed {}, {train_examples} training / {test_examples} test examples",
        plural(config.epochs, "epoch"),
        show_lr(config.lr),
        config.batch_size,
        config.seed,
    );
    let left_over = train_examples % config.batch_size;
    if config.batch_size > 1 && left_over > 0 && left_over < MIN_BATCH_WITH_BATCH_NORM {
        println!(
            "note: {train_examples} examples in batches of {} leave a last batch of {}, \
             which batch norm cannot normalise, so the training loop skips it (for every model) \
             and each epoch trains on {} (the shuffle decides which examples wait)",
            config.batch_size,
            plural(left_over, "example"),
            train_examples - left_over
        );
    }
    // With --json, the history so far is written after every epoch: an
    // interrupted or failed run keeps its finished epochs.
    let mut so_far = History::start(model.name(), &config, &data);
    let mut warned = false;
    let on_epoch = |r: &EpochRecord| {
        println!("{}", r.line());
        if let Some(path) = &args.json {
            so_far.history.push(r.clone());
            if let Err(e) = write_json(path, &so_far)
                && !std::mem::replace(&mut warned, true)
            {
                eprintln!("warning: {e} (tried again at the end)");
            }
        }
    };
    let (_net, history) =
        train_model(model, &data, &config, on_epoch).map_err(|e| e.to_string())?;
    println!("{}", history.summary());
    if let Some(r) = history.history.iter().find(|r| !r.loss.is_finite()) {
        eprintln!(
            "warning: the loss became {} in epoch {}: training diverged; try a smaller --lr \
             (this run used {}; d2l uses 1.0 for LeNet with batch norm, 0.9 for plain LeNet)",
            r.loss,
            r.epoch,
            show_lr(config.lr)
        );
    }
    if let Some(path) = &args.json {
        write_json(path, &history)?;
    }
    if let Some(path) = &args.svg {
        bnbook::plot::training_curves(&history)
            .and_then(|svg| svg.save(path))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn figures(args: FiguresArgs) -> Result<(), String> {
    let data = load(args.data_dir.as_ref())?;
    let command = command_line();
    let config = FiguresConfig {
        out: args.out,
        epochs: args.epochs,
        seeds: args.seeds.0,
        limit: args.limit,
        bench_batches: args.bench_batches,
    };
    let manifest =
        bnbook_lab::figures::generate(&data, &config, &command).map_err(|e| e.to_string())?;
    say_written(&manifest, &config.out);
    Ok(())
}

/// An explicit `--data-dir` must hold the four files: a typo, or a copy
/// with a file missing, should not quietly fall through to the other places
/// searched.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        let missing = bnbook::data::missing_files(dir);
        if missing.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "--data-dir {} lacks {} (each may be plain or .gz); put the official files there, \
             or leave --data-dir out to search the usual places and download if needed",
            dir.display(),
            missing.join(", ")
        ));
    }
    Err(format!(
        "--data-dir {} is not a directory; give the directory that holds the four \
         Fashion-MNIST files, or leave --data-dir out to search the usual places \
         (FASHION_MNIST_DIR, data/fashion-mnist, the user cache, /usr/share/datasets/fashion-mnist) \
         and download if needed",
        dir.display()
    ))
}

/// The default search, with `--data-dir` first if given (and existing).
fn load_options(data_dir: Option<&PathBuf>) -> Result<LoadOptions, String> {
    let options = LoadOptions::default();
    let Some(dir) = data_dir else {
        return Ok(options);
    };
    check_data_dir(dir)?;
    Ok(options.with_dir(dir))
}

fn load(data_dir: Option<&PathBuf>) -> Result<FashionMnist, String> {
    load_with(&load_options(data_dir)?)
}

/// Loads the data as `options` say, after warning about an unusable
/// `FASHION_MNIST_DIR`.
fn load_with(options: &LoadOptions) -> Result<FashionMnist, String> {
    warn_if_env_dir_unusable(options);
    FashionMnist::load(options).map_err(|e| e.to_string())
}

/// `FASHION_MNIST_DIR` is one place of the search, not a requirement: when
/// it lacks the files the search moves on. Say so, so that a typo in the
/// variable does not go unnoticed. (Not when `--data-dir` is given: that
/// directory is checked to hold the files and is searched first.)
fn warn_if_env_dir_unusable(options: &LoadOptions) {
    if options.dir.is_some() {
        return;
    }
    let Some(dir) = std::env::var_os(bnbook::data::ENV_DIR).filter(|v| !v.is_empty()) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let missing = bnbook::data::missing_files(&dir);
    if !missing.is_empty() {
        eprintln!(
            "warning: {}={} lacks {}; searching the other places instead",
            bnbook::data::ENV_DIR,
            dir.display(),
            missing.join(", ")
        );
    }
}

/// The closing line of a command that wrote a directory of artefacts.
fn say_written(manifest: &bnbook_lab::report::Manifest, out: &Path) {
    println!(
        "{} files written to {} (with the list of them, figures.json)",
        manifest.artefacts.len() + 1,
        out.display()
    );
}

/// The command as typed, recorded in the manifests.
fn command_line() -> String {
    std::iter::once("bnbook".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

fn norms(args: NormsArgs) -> Result<(), String> {
    let data = load(args.data_dir.as_ref())?;
    let config = CompareConfig {
        out: args.out,
        epochs: args.epochs,
        seeds: args.seeds.0,
        limit: args.limit,
        sweep_batch_sizes: args.sweep_batch_sizes.0,
        sweep_epochs: args.sweep_epochs,
        sweep_seeds: args.sweep_seeds.0,
        sweep_limit: args.sweep_limit,
        timing_repeats: args.timing_repeats,
        ..Default::default()
    };
    let manifest = bnbook_lab::compare::generate(&data, &config, &command_line())
        .map_err(|e| e.to_string())?;
    say_written(&manifest, &config.out);
    Ok(())
}

fn exercises(args: ExercisesArgs) -> Result<(), String> {
    let data = load(args.data_dir.as_ref())?;
    let config = ExercisesConfig {
        out: args.out,
        epochs: args.epochs,
        seeds: args.seeds.0,
        limit: Some(args.limit),
    };
    let manifest = bnbook_lab::exercises::generate(&data, &config, &command_line())
        .map_err(|e| e.to_string())?;
    say_written(&manifest, &config.out);
    Ok(())
}

fn dynamics(args: DynamicsArgs) -> Result<(), String> {
    let data = load(args.data_dir.as_ref())?;
    let config = DynamicsConfig {
        out: args.out,
        seeds: args.seeds.0,
        limit: args.limit,
        epochs: args.epochs,
        learning_rates: args.learning_rates.0,
        sweep_epochs: args.sweep_epochs,
        long_epochs: args.long_epochs,
        weight_scales: args.weight_scales.0,
        records_per_epoch: args.records_per_epoch,
        ..Default::default()
    };
    let manifest = bnbook_lab::dynamics::generate(&data, &config, &command_line())
        .map_err(|e| e.to_string())?;
    say_written(&manifest, &config.out);
    Ok(())
}

fn inference(args: InferenceArgs) -> Result<(), String> {
    let data = load(args.data_dir.as_ref())?;
    let config = InferenceConfig {
        out: args.out,
        epochs: args.epochs,
        seeds: args.seeds.0,
        limit: args.limit,
        precise_batches: args.precise_batches,
        sweep_batch_sizes: args.sweep_batch_sizes.0,
        sweep_epochs: args.sweep_epochs,
        sweep_limit: args.sweep_limit,
        worker_batch_sizes: args.worker_batch_sizes.0,
        sync_workers: args.sync_workers,
        timing_repeats: args.timing_repeats,
    };
    let manifest = bnbook_lab::inference::generate(&data, &config, &command_line())
        .map_err(|e| e.to_string())?;
    say_written(&manifest, &config.out);
    Ok(())
}
