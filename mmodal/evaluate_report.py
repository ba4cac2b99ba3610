"""Several models' evaluation reports (:func:`mmodal.evaluate.evaluate`) side by side as a text table, one column per
model."""

from __future__ import annotations


def format_report(report: dict[str, dict]) -> str:
    """A readable table of several models' results, one column per model."""
    names = list(report)
    rows: list[tuple[str, list[str]]] = []
    first = report[names[0]]
    for stage in ("embedding", "reranked", "ground_truth_slots"):
        if any(stage not in r["search"] for r in report.values()):
            continue
        for kind in first["search"][stage]:
            rows.append(
                (f"search {stage} P@10 {kind}", [f"{r['search'][stage][kind]['p@10']:.3f}" for r in report.values()])
            )
        rows.append((f"search {stage} mAP all", [f"{r['search'][stage]['all']['map']:.3f}" for r in report.values()]))
    if all("reranked_by_structure" in r["search"] for r in report.values()):
        for structure in first["search"]["reranked_by_structure"]:
            values = [r["search"]["reranked_by_structure"].get(structure) for r in report.values()]
            rows.append(
                (
                    f"P@10 re-ranked, {structure}",
                    ["–" if v is None else f"{v['p@10']:.3f} (n={v['n']})" for v in values],
                )
            )
    for part in ("search", "questions"):
        if all(part in r.get("paraphrases", {}) for r in report.values()):
            for key in ("worded", "grammar"):
                rows.append(
                    (f"paraphrased {part}, {key}", [f"{r['paraphrases'][part][key]:.3f}" for r in report.values()])
                )
    if all("recall_at" in r["search"] for r in report.values()):
        for k in first["search"]["recall_at"]["all"]:
            rows.append(
                (f"embedding recall@{k} all", [f"{r['search']['recall_at']['all'][k]:.3f}" for r in report.values()])
            )
    if all("detector" in r for r in report.values()):
        for key in first["detector"]:
            rows.append((f"detector {key}", [f"{r['detector'].get(key, '–')}" for r in report.values()]))
    for kind in first.get("foils", {}):
        for stage in ("embedding", "reranked"):
            values = [r["foils"][kind].get(stage) for r in report.values()]
            rows.append((f"foil {kind} {stage}", ["–" if v is None else f"{v:.3f}" for v in values]))
    if "speech" in first:
        rows.append(("speech P@10", [f"{r['speech']['p@10']:.3f}" for r in report.values()]))
        rows.append(("speech P@10 typed", [f"{r['speech']['typed']['p@10']:.3f}" for r in report.values()]))
        rows.append(("speech P@10 by sound", [f"{r['speech']['sound']['p@10']:.3f}" for r in report.values()]))
        rows.append(("speech WER", [f"{r['speech'].get('wer', {}).get('all', '-')}" for r in report.values()]))
        for name in first["speech"].get("by_synthesizer", {}):
            for key, label in (("p@10", "P@10"), ("wer", "WER")):
                values = [r["speech"].get("by_synthesizer", {}).get(name, {}).get(key, "-") for r in report.values()]
                rows.append((f"speech {label}, {name}", [str(v["all"] if isinstance(v, dict) else v) for v in values]))
    if "vqa" in first:
        rows.append(("vqa accuracy all", [f"{r['vqa']['all']['accuracy']:.3f}" for r in report.values()]))
        held = [r["vqa"].get("held_out_all", {}).get("accuracy", float("nan")) for r in report.values()]
        rows.append(("vqa accuracy held-out pairs", [f"{v:.3f}" for v in held]))
        for split in ("by_type", "seen", "held_out"):
            for qtype in first["vqa"].get(split, {}):
                rows.append(
                    (
                        f"vqa {split} {qtype}",
                        [
                            f"{r['vqa'].get(split, {}).get(qtype, {}).get('accuracy', float('nan')):.3f}"
                            for r in report.values()
                        ],
                    )
                )
        rows.append(("vqa expected calibration error", [f"{r['vqa']['ece']:.3f}" for r in report.values()]))
        for share in first["vqa"].get("kept_by_confidence", {}):
            rows.append(
                (
                    f"vqa accuracy, most confident {share}",
                    [f"{r['vqa'].get('kept_by_confidence', {}).get(share, float('nan')):.3f}" for r in report.values()],
                )
            )
    moe = [r.get("moe") for r in report.values()]
    rows.append(("MoE min expert share / uniform", [f"{m['min_share_of_uniform']:.2f}" if m else "dense" for m in moe]))
    rows.append(("MoE router entropy / max", [f"{m['router_entropy_of_max']:.2f}" if m else "dense" for m in moe]))
    width = max(len(label) for label, _ in rows)
    header = " " * width + "  " + "  ".join(f"{n[-24:]:>24}" for n in names)
    return "\n".join(
        [header] + [f"{label:<{width}}  " + "  ".join(f"{v:>24}" for v in values) for label, values in rows]
    )
