"""The codebook-size study's report: results.json, results.md (a table per measurement) and codebook-size.png (a
panel per measurement, Fig. 3's layout), rewritten from the results of every run so far (`study.run_study`)."""

import json
import math
from pathlib import Path
from typing import Callable, NamedTuple

from fsq_ref.common import files
from fsq_ref.experiments import plot

RESULTS_JSON, RESULTS_MD, FIGURE = "results.json", "results.md", "codebook-size.png"


def write_outputs(workdir: str | Path, results: list[dict]) -> None:
    """Write results.json, results.md and codebook-size.png for `results` into `workdir`."""
    workdir = Path(workdir)
    files.write_atomic(workdir / RESULTS_JSON, json.dumps(results, indent=2).encode())
    files.write_atomic(workdir / RESULTS_MD, markdown(results).encode())
    figure(results, workdir / FIGURE)


class _Metric(NamedTuple):
    """One measurement of the study: a table in results.md and a panel of the figure."""

    title: str  # the table's heading
    key: str  # in a run's result; runs without it (no MaskGIT panels) show "-" and no point
    cell: Callable[[dict], str]  # how a table cell shows a run
    panel: str  # the panel's title
    y_label: str
    scale: float = 1.0  # of the plotted value


_METRICS = (
    _Metric("Codebook usage (codes used at least once on the test split)", "usage",
            lambda r: f"{r['usage']:.1%} ({r['codes_used']}/{r['codebook_size']})", "codebook usage", "usage (%)",
            100.0),
    _Metric("Reconstruction PSNR (dB, higher is better)", "psnr", lambda r: f"{r['psnr']:.2f}",
            "reconstruction PSNR", "PSNR (dB)"),
    _Metric("Reconstruction Frechet distance (classifier features, lower is better)", "frechet_distance",
            lambda r: f"{r['frechet_distance']:.2f}", "reconstruction Frechet distance", "Frechet distance"),
    _Metric("Compression cost with a masked transformer (bits per token to code the test tokens; the code entropy "
            "in brackets)", "maskgit_bits_per_token",
            lambda r: f"{r['maskgit_bits_per_token']:.2f} ({r['bits_per_token']:.2f})",
            "compression cost (masked transformer)", "bits per token"),
    _Metric("MaskGIT budget (steps trained, in rounds until one lowered the held-out NLL by less than the study's "
            "tolerance; a * where the round cap stopped it first)", "maskgit_steps_trained",
            lambda r: f"{r['maskgit_steps_trained']}{'' if r['maskgit_flat'] else '*'}", "MaskGIT budget",
            "training steps"),
    _Metric("Code entropy (bits per token, each token coded alone with its frequency; log2 of the codebook size in "
            "brackets)", "bits_per_token",
            lambda r: f"{r['bits_per_token']:.2f} ({math.log2(r['codebook_size']):.2f})",
            "code entropy", "bits per token"),
    _Metric("Sampling Frechet distance (MaskGIT samples against the test images; class accuracy of the samples in "
            "brackets)", "sampling_frechet_distance",
            lambda r: f"{r['sampling_frechet_distance']:.2f} ({r['sample_class_accuracy']:.1%})",
            "sampling Frechet distance", "Frechet distance"),
)


def markdown(results: list[dict]) -> str:
    """The study as Markdown: one table per measurement, a row per codebook size and a column per quantizer."""
    if not results:
        return "# Codebook-size study\n\nNo runs yet.\n"
    first = results[0]
    quantizers = list(dict.fromkeys(r["quantizer"] for r in results))
    by_run = {(r["quantizer"], r["size"]): r for r in results}
    lines = ["# Codebook-size study (paper Fig. 3)", "",
             f"Data {first['data']}, network preset {first['preset']}, {first['steps']} steps of batch "
             f"{first['batch_size']}, seed {first['seed']}; measured on {first['test_images']} test images. Feature "
             f"classifier test accuracy {first['classifier_accuracy']:.1%}. The usage table gives codes used / actual "
             "codebook size in brackets: FSQ's is the product of its levels (levels 5,3 give 15 codes for the "
             "target 16)."]
    for metric in _METRICS:
        if not any(metric.key in r for r in results):
            continue  # a study without MaskGIT panels
        lines += ["", f"## {metric.title}", "", "| codebook size | " + " | ".join(quantizers) + " |",
                  "|---:|" + "---:|" * len(quantizers)]
        for size in sorted({r["size"] for r in results}):
            cells = [metric.cell(by_run[q, size]) if metric.key in by_run.get((q, size), {}) else "-"
                     for q in quantizers]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    diagnosed = [r for r in results if r.get("channels")]
    if diagnosed:
        lines += ["", "## Where FSQ's unused codes come from", "",
                  "Per FSQ run, from the test split's codes: the share of its values that the least used channel "
                  "uses; the sum of the channels' entropies against the joint entropy (their difference, the total "
                  "correlation, is what the channels share: value combinations that never occur together); and the "
                  "usage expected if the channels were independent with the same marginals.", "",
                  "| codebook size | levels | values used (worst channel) | sum of channel entropies | joint entropy "
                  "| total correlation | usage if independent | usage |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(diagnosed, key=lambda r: r["size"]):
            c = r["channels"]
            lines.append(f"| {r['size']} | {','.join(map(str, r['levels']))} | {c['values_used']:.0%} | "
                         f"{c['marginal_bits']:.2f} bits | {c['joint_bits']:.2f} bits | "
                         f"{c['total_correlation_bits']:.2f} bits | {c['independent_usage']:.1%} | {r['usage']:.1%} |")
    return "\n".join(lines) + "\n"


def figure(results: list[dict], path: str | Path) -> str:
    """Fig. 3 for this study: a panel per measurement (usage, PSNR, Frechet distances, bits per token) against log2 of
    the codebook size; the MaskGIT panels only when some run has them."""
    quantizers = list(dict.fromkeys(r["quantizer"] for r in results))
    panels = []
    for metric in _METRICS:
        if not any(metric.key in r for r in results):
            continue
        series = {}
        for q in quantizers:
            runs = sorted((r for r in results if r["quantizer"] == q and metric.key in r),
                          key=lambda r: r["codebook_size"])
            if runs:
                series[q] = ([math.log2(r["codebook_size"]) for r in runs],
                             [r[metric.key] * metric.scale for r in runs])
        panels.append(plot.Panel(metric.panel, "log2 codebook size", metric.y_label, series,
                                 y_range=(0.0, 100.0) if metric.key == "usage" else None))
    return plot.line_panels(panels, path)
