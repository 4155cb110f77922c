"""The verdict on a bundle's variants: which one answers by default, and the
bundle's `report.md`, from the rows `slc.export.exporter` measured."""

from __future__ import annotations

from typing import Any

from slc.config import ExportConfig
from slc.runtime import bundle as bundles


def choose_default(variants: dict[str, dict[str, Any]], config: ExportConfig) -> str:
    """On validation macro F1 (`val_macro_f1`): mark variants losing more than
    `max_f1_loss` against fp32 as rejected; the default is the fastest (by
    `speedup_vs_fp32`, paired timings) within `default_f1_margin` of fp32
    whose answers do not depend on the batch (`batch_drift` within
    `parity_tolerance`), and fp32 unless that is at least `min_speedup`.
    Test scores play no part."""
    reference = variants[bundles.FP32]["val_macro_f1"]
    for name, v in variants.items():
        if "file" not in v:
            continue
        loss = reference - v["val_macro_f1"]
        v["rejected"] = loss > config.max_f1_loss
        if v["rejected"]:
            v["rejected_because"] = f"val macro F1 {v['val_macro_f1']:.4f} is {100 * loss:.1f} points below fp32"
    candidates = [
        name for name, v in variants.items()
        if "file" in v and not v["rejected"] and v["batch_drift"] <= config.parity_tolerance
        and v["val_macro_f1"] >= reference - config.default_f1_margin
    ]  # fmt: skip
    fastest = max(candidates, key=lambda name: variants[name]["speedup_vs_fp32"], default=bundles.FP32)
    return fastest if variants[fastest]["speedup_vs_fp32"] >= config.min_speedup else bundles.FP32


def variants_table(manifest: dict[str, Any]) -> str:
    """Markdown table of the variants: val macro F1 (what the default is chosen
    on), test macro F1 and IoU (what is reported), size, latency, verdict."""
    rows = [
        "| variant | val F1 | test F1 | test IoU | size MB | p50 ms (4 s, 1 thread) | vs PyTorch (paired) | vs fp32 (paired) | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, v in manifest["variants"].items():
        if "file" not in v:
            rows.append(f"| {name} | | | | | | | | failed: {v['error'][:80]} |")
            continue
        status = "rejected" if v["rejected"] else ("default" if name == manifest["default_variant"] else "ok")
        if v["batch_drift"] > manifest["parity"]["tolerance"] and not v["rejected"]:
            status += f" (answers depend on the batch: {v['batch_drift']:.0e})"
        rows.append(
            f"| {name} | {v['val_macro_f1']:.4f} | {v['test_macro_f1']:.4f} | {v['test_iou']:.4f} | {v['size_mb']:.2f} "
            f"| {v['p50_ms']:.2f} | {v['speedup_vs_torch']:.2f}x | {v['speedup_vs_fp32']:.2f}x | {status} |"
        )
    rows.append(f"| PyTorch eager | | | | | {manifest['torch_p50_ms']:.2f} | 1.00x | | baseline |")
    return "\n".join(rows)


def report(manifest: dict[str, Any]) -> str:
    scored, open_set = manifest["scored_on"], manifest["open_set"]
    lines = [
        "# slc bundle",
        "",
        f"- exported from: {manifest['exported_from']} (slc {manifest['slc_version']})",
        f"- labels: {', '.join(manifest['labels'])}",
        f"- scored on: {scored['shards']} ({scored['clips']['val']} val clips, {scored['clips']['test']} test clips); "
        f"static int8 calibrated on {manifest['calibrated_on']['clips']} val clips",
        "- default variant chosen on val: the fastest (median of rounds timed in alternation with fp32; "
        f"fp32 unless {manifest['default_rule']['min_speedup']:.2f}x faster) within "
        f"{100 * manifest['default_rule']['margin']:.1f} point of fp32's val macro F1; a variant more than "
        f"{100 * manifest['default_rule']['max_loss']:.1f} point below is rejected. Test figures are reported only.",
        f"- parity with PyTorch: max |dp| {manifest['parity']['max_abs_diff']:.1e} "
        f"(tolerance {manifest['parity']['tolerance']:.0e})",
        f"- latency: {manifest['latency']}",
        f"- default variant: **{manifest['default_variant']}**",
        f"- open set: temperature {open_set['temperature']:.3f}; `unknown` below {open_set['threshold']:.4f} "
        f"calibrated confidence ({100 * open_set['target_miss']:.0f}% of in-set val clips)"
        + (f" or when `{open_set['background']}` wins" if open_set["background"] else ""),
        "",
        variants_table(manifest),
        "",
    ]
    rejected = [f"- {name}: {v['rejected_because']}" for name, v in manifest["variants"].items() if v.get("rejected")]
    if rejected:
        lines += ["Rejected (never the default):", "", *rejected, ""]
    return "\n".join(lines)
