// The browser lab ("Try it: batch norm in your browser", book/lab.md).
// Every number comes from the bnbook crate compiled to WebAssembly
// (crates/bnbook-web); this file only reads the controls and draws.
// Built by scripts/build_lab.sh into book/lab/pkg/.

const $ = (id) => document.getElementById(id);
const status = $("lab-status");

function say(text, bad) {
  status.textContent = text;
  status.className = bad ? "lab-status lab-bad" : "lab-status";
}

// ---------- drawing ----------
function histogram(canvas, values, color, range) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, bins = 30;
  ctx.clearRect(0, 0, w, h);
  const [lo, hi] = range;
  const counts = new Array(bins).fill(0);
  for (const v of values) {
    const b = Math.floor(((v - lo) / (hi - lo)) * bins);
    if (b >= 0 && b < bins) counts[b] += 1;
  }
  const top = Math.max(1, ...counts);
  ctx.fillStyle = color;
  for (let b = 0; b < bins; b++) {
    const bh = (counts[b] / top) * (h - 14);
    ctx.fillRect((b * w) / bins + 1, h - 12 - bh, w / bins - 2, bh);
  }
  ctx.fillStyle = "#555";
  ctx.font = "10px sans-serif";
  ctx.fillText(lo.toFixed(1), 2, h - 1);
  ctx.fillText(hi.toFixed(1), w - 24, h - 1);
  if (lo < 0 && hi > 0) {
    const x0 = (-lo / (hi - lo)) * w;
    ctx.fillRect(x0, 0, 1, h - 12);
  }
}

function lineChart(canvas, series, yLabel) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const pts = series.flatMap((s) => s.points);
  if (pts.length === 0) return;
  const xMax = Math.max(1, ...pts.map((p) => p[0]));
  const yMin = Math.min(...pts.map((p) => p[1]));
  const yMax = Math.max(...pts.map((p) => p[1]));
  const span = yMax - yMin || 1;
  const X = (x) => pad + (x / xMax) * (w - pad - 8);
  const Y = (y) => h - pad + 10 - ((y - yMin) / span) * (h - pad - 10);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, 0, w - pad - 8, h - pad + 10);
  ctx.fillStyle = "#555";
  ctx.font = "10px sans-serif";
  ctx.fillText(yMax.toFixed(2), 0, 10);
  ctx.fillText(yMin.toFixed(2), 0, h - pad + 10);
  ctx.fillText(`step ${xMax}`, w - 60, h - 4);
  ctx.fillText(yLabel, pad + 4, h - 4);
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.beginPath();
    s.points.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.stroke();
  }
}

// ---------- part 1: normalise a batch ----------
function demoSettings() {
  return {
    batch_size: Number($("bn-batch").value),
    gamma: Number($("bn-gamma").value),
    beta: Number($("bn-beta").value),
    eps: 10 ** Number($("bn-eps").value),
    input_shift: Number($("bn-shift").value),
    input_scale: Number($("bn-scale").value),
    momentum: Number($("bn-momentum").value),
    convention: $("bn-convention").value,
    training: $("bn-mode").value === "train",
  };
}

function showSettings(s) {
  $("bn-batch-v").textContent = s.batch_size;
  $("bn-gamma-v").textContent = s.gamma.toFixed(2);
  $("bn-beta-v").textContent = s.beta.toFixed(2);
  $("bn-eps-v").textContent = s.eps.toExponential(0);
  $("bn-shift-v").textContent = s.input_shift.toFixed(1);
  $("bn-scale-v").textContent = s.input_scale.toFixed(1);
  $("bn-momentum-v").textContent = s.momentum.toFixed(2);
}

function normalise(demo) {
  const s = demoSettings();
  showSettings(s);
  let r;
  try {
    r = JSON.parse(demo.normalize(JSON.stringify(s)));
  } catch (e) {
    $("bn-error").textContent = String(e.message || e);
    return;
  }
  $("bn-error").textContent = "";
  const rows = $("bn-stats").querySelectorAll("tbody tr");
  const fix = (v) => Number(v).toFixed(4);
  r.input.forEach((values, f) => {
    const all = values.concat(r.output[f]);
    const lo = Math.min(...all), hi = Math.max(...all);
    const pad = 0.05 * (hi - lo || 1);
    const range = [lo - pad, hi + pad];
    histogram($(`bn-hist-in-${f}`), values, "#7a9cc6", range);
    histogram($(`bn-hist-out-${f}`), r.output[f], "#d9822b", range);
    const cells = rows[f].querySelectorAll("td");
    [r.batch_mean[f], r.batch_var[f], r.output_mean[f], r.output_var[f],
     r.running_mean[f], r.running_var[f]].forEach((v, i) => {
      cells[i + 1].textContent = fix(v);
      cells[i + 1].dataset.value = String(v); // full precision, for CI's check
    });
  });
  $("bn-tracked").textContent = r.batches_tracked;
}

// ---------- part 2: train with and without BN ----------
const files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
let dataBytes = null;
async function loadData() {
  if (!dataBytes) {
    dataBytes = await Promise.all(files.map(async (f) => {
      const r = await fetch(`lab/data/${f}.gz`);
      if (!r.ok) throw new Error(`lab/data/${f}.gz: HTTP ${r.status}`);
      return new Uint8Array(await r.arrayBuffer());
    }));
  }
  return dataBytes;
}

const runs = [];
let running = null;

function mean(a) { return a.reduce((x, y) => x + y, 0) / Math.max(1, a.length); }

function drawRuns() {
  const smooth = (r) => r.losses.map((_, i) => [i + 1, mean(r.losses.slice(Math.max(0, i - 9), i + 1))]);
  lineChart($("train-loss"), runs.map((r) => ({ color: r.color, points: smooth(r) })), "training loss (mean of 10 steps)");
  lineChart($("train-acc"), runs.map((r) => ({ color: r.color, points: r.testAcc })), "test accuracy");
  const list = $("train-runs");
  list.innerHTML = "";
  for (const r of runs) {
    const li = document.createElement("li");
    li.style.color = r.color;
    const acc = r.testAcc.length ? r.testAcc[r.testAcc.length - 1][1] : NaN;
    li.textContent = `${r.label}: ${r.losses.length} steps, loss ${mean(r.losses.slice(-10)).toFixed(3)}, test accuracy ${(100 * acc).toFixed(1)} %`;
    list.appendChild(li);
  }
}

async function startTraining(mod, maxSteps) {
  if (running) running.stop = true;
  const settings = {
    batch_norm: $("train-bn").checked,
    lr: Number($("train-lr").value),
    batch_size: Number($("train-batch").value),
    seed: 0,
  };
  let trainer;
  try {
    const d = await loadData();
    trainer = new mod.LabTrainer(d[0], d[1], d[2], d[3], JSON.stringify(settings));
  } catch (e) {
    $("train-error").textContent = String(e.message || e);
    return;
  }
  $("train-error").textContent = "";
  const colors = ["#d9822b", "#2b6cd9", "#2ba84a", "#a82b8f", "#777"];
  const run = {
    label: `${settings.batch_norm ? "with BN" : "without BN"}, lr ${settings.lr}, batch ${settings.batch_size}`,
    color: colors[runs.length % colors.length], losses: [], testAcc: [], stop: false, trainer,
  };
  runs.push(run);
  running = run;
  const total = maxSteps || Number($("train-steps").value);
  const stepsPerEpoch = Math.floor(2400 / settings.batch_size);
  const slice = () => {
    if (run.stop) { trainer.free(); return; }
    const t0 = performance.now();
    // a few steps, then back to the browser: the page never freezes
    for (let k = 0; k < 8 && run.losses.length < total; k++) {
      const p = JSON.parse(trainer.step(1));
      run.losses.push(p.loss);
      if (run.losses.length % stepsPerEpoch === 0 || run.losses.length === total) {
        run.testAcc.push([run.losses.length, trainer.testAccuracy()]);
      }
      if (performance.now() - t0 > 30) break;
    }
    drawRuns();
    const first = mean(run.losses.slice(0, 10)), last = mean(run.losses.slice(-10));
    $("train-done-steps").textContent = run.losses.length;
    $("train-first-loss").textContent = first.toFixed(4);
    $("train-last-loss").textContent = last.toFixed(4);
    $("train-first-loss").dataset.value = String(first);
    $("train-last-loss").dataset.value = String(last);
    if (run.losses.length < total) {
      setTimeout(slice, 0);
    } else {
      $("train-state").textContent = "finished";
      trainer.free();
      running = null;
    }
  };
  $("train-state").textContent = "training";
  setTimeout(slice, 0);
}

// ---------- start ----------
async function main() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    say("This browser cannot run WebAssembly, so the lab cannot run here. " +
        "Every experiment on this page also runs natively: see the README (`cargo test -p bnbook-web`).", true);
    return;
  }
  let mod;
  try {
    mod = await import("./pkg/bnbook_web.js");
    await mod.default({ module_or_path: new URL("./pkg/bnbook_web_bg.wasm", import.meta.url) });
  } catch (e) {
    say("The lab's WebAssembly module did not load (" + (e.message || e) + "). " +
        "If you built the book yourself, run scripts/build_lab.sh first.", true);
    return;
  }
  say("WebAssembly loaded: the numbers below are computed by the bnbook crate in your browser.");
  document.querySelectorAll(".lab-controls").forEach((el) => (el.hidden = false));
  const demo = new mod.BatchNormDemo(0);
  for (const id of ["bn-batch", "bn-gamma", "bn-beta", "bn-eps", "bn-shift", "bn-scale",
                    "bn-momentum", "bn-convention", "bn-mode"]) {
    $(id).addEventListener("input", () => normalise(demo));
  }
  $("bn-draw").addEventListener("click", () => normalise(demo));
  $("bn-draw-20").addEventListener("click", () => { for (let i = 0; i < 20; i++) normalise(demo); });
  $("bn-reset").addEventListener("click", () => { demo.reset(); normalise(demo); });
  normalise(demo);
  $("train-start").addEventListener("click", () => startTraining(mod));
  $("train-stop").addEventListener("click", () => {
    if (running) { running.stop = true; running = null; $("train-state").textContent = "stopped"; }
  });
  const auto = /autotrain=(\d+)/.exec(location.hash);
  if (auto) startTraining(mod, Number(auto[1]));
}

main();
