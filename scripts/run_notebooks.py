#!/usr/bin/env python3
"""Execute evcxr (Rust kernel) notebooks headless and report each one.

    .venv/bin/python scripts/run_notebooks.py notebooks/*.ipynb
    .venv/bin/python scripts/run_notebooks.py --in-place notebooks/*.ipynb

Each notebook runs top to bottom in a fresh `rust` kernel whose working
directory is the notebook's folder (so `:dep bnbook = { path = "../crates/bnbook" }`
resolves). The executed copy is written next to it as NAME.out.ipynb
(git-ignored); with --in-place the outputs go into the notebook itself, which
is how the committed outputs are refreshed (full size: no BNBOOK_EPOCHS or
BNBOOK_LIMIT in the environment). A notebook that fails is never written in
place. Prints `ok`/`FAIL` per notebook, then
`notebooks: N passed, N failed`, and exits 1 if any notebook failed.

A cell fails on a compile error (evcxr's `error` output, printed here with
the compiler message) or a panic. evcxr survives panics by default, so CI
points EVCXR_CONFIG_DIR at .ci/evcxr, whose init.evcxr sets
`:preserve_vars_on_panic 0`; the runner also scans stderr for "panicked at".
Cell timeout: BNBOOK_CELL_TIMEOUT seconds (default 1800).
"""

import os
import pathlib
import re
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def panic_summary(text):
    """The `panicked at` lines of a panic's stderr and the message after each, no backtrace."""
    lines = ANSI.sub("", text).splitlines()
    keep = []
    for i, line in enumerate(lines):
        if "panicked at" in line:
            keep += lines[i : i + 2]
    return "\n".join(keep)


def problems(nb):
    """(cell index, message) for every error output or panic in an executed notebook."""
    for i, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
        if "panicked at" in stderr:
            yield i, "panic:\n" + panic_summary(stderr)
        for out in outputs:
            if out.output_type == "error":
                trace = ANSI.sub("", "\n".join(out.get("traceback", []))).strip()
                head = f"{out.ename}: {out.evalue}".strip()
                # evcxr often repeats the message as its traceback
                yield i, head if trace in ("", out.evalue.strip()) else f"{head}\n{trace}"


def indent(text, prefix="    "):
    return "\n".join(prefix + line for line in text.splitlines())


def main(args):
    in_place = "--in-place" in args
    args = [a for a in args if a != "--in-place"]
    if not args:
        print(__doc__)
        return 2
    timeout = int(os.environ.get("BNBOOK_CELL_TIMEOUT", "1800"))
    passed = failed = 0
    for arg in args:
        path = pathlib.Path(arg).resolve()
        if path.name.endswith(".out.ipynb"):  # an executed copy from an earlier run
            continue
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="rust",
            resources={"metadata": {"path": str(path.parent)}},  # kernel cwd = notebook dir
        )
        t0, crash = time.time(), None
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            crash = e
        except Exception as e:  # e.g. NoSuchKernel: report it as a failure of this notebook
            crash = e
        elapsed = time.time() - t0
        found = list(problems(nb))
        failed_here = crash is not None or bool(found)
        nbformat.write(nb, path if in_place and not failed_here else path.with_suffix(".out.ipynb"))
        if crash is not None or found:
            failed += 1
            print(f"FAIL {path.name} ({elapsed:.1f}s)", flush=True)
            for i, msg in found:
                print(f"  cell {i}:")
                print(indent(msg))
            if crash is not None and not found:
                print(indent(f"{type(crash).__name__}: {str(crash)[-3000:]}"))
        else:
            passed += 1
            print(f"ok   {path.name} ({elapsed:.1f}s)", flush=True)
    print(f"notebooks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
