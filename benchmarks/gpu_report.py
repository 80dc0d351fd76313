r"""Markdown section of RESULTS.md from the JSON files of ``benchmarks/gpu.sh`` (train and predict throughput).

    python benchmarks/gpu_report.py OUTDIR|FILE.json ... [--results benchmarks/RESULTS.md] [--title GPU] \
        [--command "..."] [--failed "name ..."] [--date 2026-11-26]

Reads the given JSON files, or every ``OUTDIR/*.json``, written by ``benchmarks/train_throughput.py``
(``"benchmark": "train"``) and ``benchmarks/predict_throughput.py`` (``"predict"``), prints a section
headed ``## TITLE (date, device kind, jax version)`` with one table per benchmark, and with ``--results``
appends it to that file (atomically: :func:`npejax.io.atomic_write`).
Figures are rounded for reading; the JSON keeps them whole.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from npejax import io  # noqa: E402

MIB = 2**20


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    return f"{value * scale:,.{digits}f}"


def _config_name(doc: dict) -> str:
    name = os.path.splitext(os.path.basename(doc.get("config_file") or doc.get("workdir") or "?"))[0]
    return f"{name} (width {doc.get('width', '?')}, {doc.get('conv_blocks', '?')} blocks)"


def load(paths) -> tuple[list[dict], list[dict]]:
    """(train documents, predict documents) of the JSON files ``paths`` (a directory: its ``*.json``, sorted
    by name), in that order; ValueError for a file that is not one of them."""
    train, predict = [], []
    files = []
    for p in [paths] if isinstance(paths, str) else paths:
        files += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"{path} does not exist")
        with open(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not JSON ({exc}): a run cut off while writing?") from None
        kind = doc.get("benchmark") if isinstance(doc, dict) else None
        if kind not in ("train", "predict"):
            raise ValueError(
                f"{path}: 'benchmark' is {kind!r}, expected 'train' or 'predict' (a file of "
                "benchmarks/train_throughput.py or predict_throughput.py)"
            )
        (train if kind == "train" else predict).append(doc)
    return train, predict


def train_table(docs: list[dict]) -> list[str]:
    lines = [
        "| config | dtype | batch | images/s | ms/step | GFLOP/image (XLA) | TFLOP/s | % of peak (peak) | "
        "conv GFLOP/image | conv % of peak | compile s | paper protocol h |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for doc in docs:
        for r in doc["results"]:
            peak = f"{_fmt(r.get('mfu'), 1, 100)} ({r['peak_tflops']:g})" if r.get("peak_tflops") else "n/a"
            lines.append(
                f"| {_config_name(doc)} | {r['dtype']} | {r['batch_size']} | {_fmt(r['images_per_s'])} | "
                f"{_fmt(r['ms_per_step'], 2)} | {_fmt(r.get('gflop_per_image'), 3)} | {_fmt(r.get('tflops'), 2)} | "
                f"{peak} | {_fmt(r.get('conv_gflop_per_image'), 3)} | {_fmt(r.get('conv_mfu'), 1, 100)} | "
                f"{_fmt(r['compile_s'])} | {_fmt(r.get('paper_protocol_hours'), 2)} |"
            )
    return lines


def predict_table(docs: list[dict]) -> list[str]:
    lines = [
        "| config | dtype | images/s, network (batch) | images/s, Predictor | GFLOP/image | frame | chunk | "
        "frames/s | s/frame | peak memory MiB |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for doc in docs:
        im = doc["images"]
        head = (
            f"| {_config_name(doc)} | {doc['dtype']} | {_fmt(im['network_images_per_s'])} ({im['batch_size']}) | "
            f"{_fmt(im['predict_images_per_s'])} | {_fmt(im.get('gflop_per_image'), 3)} | "
        )
        if not doc.get("frames"):
            lines.append(head + f"- | - | - | - | {_fmt(im['peak_bytes'], 0, 1 / MIB)} |")
        for fr in doc.get("frames", []):
            lines.append(
                head + f"{fr['frame_shape'][0]} x {fr['frame_shape'][1]} | {fr['chunk_size'] or 'whole'} | "
                f"{_fmt(fr['frames_per_s'], 3)} | {_fmt(fr['s_per_frame'], 3)} | "
                f"{_fmt(fr['peak_bytes'], 0, 1 / MIB)} |"
            )
    return lines


def section(
    train: list[dict],
    predict: list[dict],
    title: str = "GPU",
    command: str | None = None,
    failed: str = "",
    date: str | None = None,
) -> str:
    """The markdown section (module doc); ValueError when there is nothing to report."""
    docs = train + predict
    if not docs:
        raise ValueError("no benchmark JSON files to report (did every run fail? see its log)")
    first = docs[0]
    date = date or datetime.date.today().isoformat()
    out = [f"## {title} ({date}, {first['device_kind']}, jax {first['jax']})", ""]
    if command:
        out += [f"`{command}`", ""]
    if failed.strip():
        out += [f"**Failed or timed out** (no figures): {', '.join(failed.split())}; see their logs.", ""]
    if train:
        steps = sorted({r["steps"] for d in train for r in d["results"]})
        out += [
            f"Training step (`benchmarks/train_throughput.py`, {'/'.join(map(str, steps))} timed steps per row). "
            "GFLOP/image: XLA's cost analysis of the compiled train step (forward, backward, Adam, augmentation); "
            "conv: its convolutions and matrix products alone, counted from the jaxpr. % of peak: achieved "
            "TFLOP/s over the dense peak of the devices used (in brackets, per device; float32 is compared with "
            "the TF32 peak, the precision XLA uses for float32 convolutions on this GPU by default). Paper "
            "protocol: 10.5M image-steps (210k images x 50 epochs) at this rate, train steps only.",
            "",
        ]
        out += train_table(train) + [""]
        best = max((r for d in train for r in d["results"]), key=lambda r: r["images_per_s"])
        out += [
            f"Fastest: {best['dtype']} at batch {best['batch_size']}, {_fmt(best['images_per_s'])} images/s: "
            f"the paper's 10.5M image-steps in {_fmt(best['paper_protocol_hours'], 2)} h of train steps.",
            "",
        ]
    if predict:
        out += [
            "Prediction (`benchmarks/predict_throughput.py`): network = the jit-compiled network alone on batches "
            "already on the device; Predictor = `Predictor.predict_tiles` from host arrays (transfers, posterior "
            "summaries, checks). Frames: one frame through `predict_tiles` in chunks of the given size (whole: one "
            "call). Peak memory: " + predict[0]["peak_memory_source"] + ", the process's peak so far (phases in "
            "table order). Inputs: " + predict[0]["inputs"] + ".",
            "",
        ]
        out += predict_table(predict) + [""]
    return "\n".join(out)


def append(results: str, text: str) -> str:
    """Appends ``text`` to the file ``results`` (created if missing) after one blank line; atomic."""
    old = ""
    if os.path.exists(results):
        with open(results) as f:
            old = f.read()
    if old and not old.endswith("\n"):
        old += "\n"
    return io.atomic_write(results, old + ("\n" if old else "") + text.rstrip("\n") + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="the benchmarks' JSON files, or directories of them")
    parser.add_argument("--results", help="append the section to this markdown file")
    parser.add_argument("--title", default="GPU")
    parser.add_argument("--command", help="the command that made the files, quoted in the section")
    parser.add_argument("--failed", default="", help="names of runs that failed, space-separated")
    parser.add_argument("--date", help="date in the heading (default: today)")
    args = parser.parse_args(argv)
    try:
        train, predict = load(args.paths)
        text = section(train, predict, args.title, args.command, args.failed, args.date)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(text)
    if args.results:
        append(args.results, text)
        print(f"appended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
