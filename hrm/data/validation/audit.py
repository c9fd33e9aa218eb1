"""Audit of any 18-file set, ours or anyone's: findings with counts and examples from whatever can be read.

When a strict layer fails, every check that can still run on the parsed documents runs; the rest are listed as
not run and score 0. The generic checks also run on our own files, beside compliance's full ones.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.data.conversion.raw import RawSplit
from hrm.data.validation.compliance import (
    MAX_FAILURES_LISTED,
    Check,
    base_maps,
    count_check,
    equal_share_matrix,
    share_check,
)
from hrm.io import shown

BLANK_IDENTIFIER = "<blank>"


def not_run(name: str, category: str, description: str, reason: str, critical: bool = True) -> Check:
    """A check that could not run: listed with its reason, scored 0, failed."""
    return Check(
        name, category, description, 0.0, 0.0, [f"not run: {reason}"], critical=critical, not_run=reason
    )


def finding_check(
    name: str,
    category: str,
    description: str,
    findings: list[tuple[str, int]],
    total: int,
    critical: bool = True,
) -> Check:
    """Passed when no finding; each finding is (message with examples, how many items it covers); the
    score is the share of the `total` items not covered by any finding."""
    messages = [message for message, _ in findings]
    bad = sum(count for _, count in findings)
    return share_check(name, category, description, messages, total, critical, failure_count=bad)


def _examples(items: list[Any], limit: int = 3) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---- the checks ------------------------------------------------------------------------------------------


def _held(view: RawSplit) -> dict[str, int | None]:
    """Examples and distinct base ids a split holds; None where its file is unreadable."""
    bases = view.base_scenario_ids
    return {
        "examples": None if view.inputs is None else view.num_examples,
        "bases": None if bases is None else len({str(b) for b in bases}),
    }


def count_checks(views: dict[str, RawSplit], expected_bases: dict[str, int], n_vehicles: int) -> list[Check]:
    """Examples and distinct base ids per split, against params (the same checks as on our own files)."""
    checks = []
    for split, view in views.items():
        expected, held = expected_bases[split], _held(view)
        wanted = {  # key -> (expected count, description, the file it needs, description when not run)
            "examples": (
                expected * n_vehicles,
                f"{split} examples ({expected} bases x {n_vehicles} vehicles, params.yaml)",
                "inputs",
                f"{split} examples vs params.yaml",
            ),
            "bases": (
                expected,
                f"{split} base scenarios (params.yaml generate.{split}_bases)",
                "base_scenario_ids",
                f"{split} base scenarios vs params.yaml",
            ),
        }
        for key, (count, description, kind, not_run_description) in wanted.items():
            if held[key] is None:
                reason = f"{view.files[kind]}: {view.unreadable.get(kind, 'unreadable')}"
                checks.append(not_run(f"{split}_{key}", "methodology", not_run_description, reason))
            else:
                checks.append(count_check(f"{split}_{key}", "methodology", description, held[key], count))
    return checks


def _claims(summary: Any, split: str) -> dict[str, Any]:
    """What a summary says of a split's size: our `counts.<split>.{examples,bases}` or flat
    `<split>_examples` / `<split>_bases` keys (the original tool's style)."""
    if not isinstance(summary, dict):
        return {}
    claims = {}
    counts = summary.get("counts")
    if isinstance(counts, dict) and isinstance(counts.get(split), dict):
        claims.update({k: v for k, v in counts[split].items() if k in ("examples", "bases")})
    for key in ("examples", "bases"):
        for flat in (f"{split}_{key}", f"num_{split}_{key}"):
            if flat in summary:
                claims[key] = summary[flat]
    return claims


def summary_claims_check(views: dict[str, RawSplit], summary: Any) -> Check:
    description = "the summary's own counts (examples, bases per split) equal what the files hold"
    findings: list[tuple[str, int]] = []
    compared = 0
    for split, view in views.items():
        held = _held(view)
        for key, claim in _claims(summary, split).items():
            if held[key] is None:
                continue
            compared += 1
            if claim != held[key]:
                message = f"{spec.RAW_SUMMARY_FILE}: claims {shown(claim)} {split} {key}, the files hold {held[key]}"
                findings.append((message, 1))
    if not compared:
        reason = f"{spec.RAW_SUMMARY_FILE} states no per-split counts"
        return not_run("summary_claims", "methodology", description, reason)
    return finding_check("summary_claims", "methodology", description, findings, compared)


def identifier_check(views: dict[str, RawSplit], identifiers: Any) -> Check:
    """Blank or missing base ids, vehicle names and puzzle identifiers (the blank id 0 tells the model
    nothing: every vehicle looks the same to it)."""
    findings: list[tuple[str, int]] = []
    total = 0
    for view in views.values():
        for kind, values in (
            ("base_scenario_ids", view.base_scenario_ids),
            ("vehicle_types", view.vehicle_types),
        ):
            if values is None:
                continue
            total += len(values)
            blank = [
                i for i, v in enumerate(values) if v is None or not str(v).strip() or v == BLANK_IDENTIFIER
            ]
            if blank:
                message = f"{view.where(kind)}: {len(blank)} blank or missing entries, e.g. indices {_examples(blank)}"
                findings.append((message, len(blank)))
        if view.example_identifier is not None:
            total += view.example_identifier.size
            blank = np.flatnonzero(view.example_identifier == 0).tolist()
            if blank:
                message = (
                    f"{view.where('puzzle_identifiers')}: {len(blank)} examples have puzzle identifier 0 (blank): "
                    f"the model is never told the vehicle, e.g. examples {_examples(blank)}"
                )
                findings.append((message, len(blank)))
    if isinstance(identifiers, list):
        total += len(identifiers)
        blank = [
            i
            for i, v in enumerate(identifiers[1:], start=1)
            if not isinstance(v, str) or not v.strip() or v == BLANK_IDENTIFIER
        ]
        if blank:
            findings.append(
                (f"{spec.RAW_IDENTIFIERS_FILE}: ids {_examples(blank)} have a blank name", len(blank))
            )
        if len(identifiers) < 2:
            findings.append((f"{spec.RAW_IDENTIFIERS_FILE}: {shown(identifiers)} names no vehicle", 1))
            total += 1
    return finding_check(
        "identifiers_present",
        "methodology",
        "no blank or missing base id, vehicle name or puzzle identifier",
        findings,
        max(total, 1),
    )


def conflicting_labels_check(views: dict[str, RawSplit]) -> Check:
    """The same input with the same puzzle identifier but different labels: no model can tell them apart."""
    description = (
        "no input appears with the same puzzle identifier and different labels (within and across splits)"
    )
    usable = {n: v for n, v in views.items() if v.inputs is not None and v.labels is not None}
    if not usable:
        return not_run("conflicting_labels", "tokens", description, "no split has readable inputs and labels")
    seen: dict[tuple[bytes, int], dict[bytes, tuple[str, int]]] = defaultdict(dict)
    notes = []
    for name, view in usable.items():
        ids = (
            view.example_identifier if view.example_identifier is not None else np.full(view.num_examples, -1)
        )
        if view.example_identifier is None:
            notes.append(f"{name}: puzzle identifiers unreadable, inputs compared alone")
        for i in range(view.num_examples):
            seen[(view.inputs[i].tobytes(), int(ids[i]))].setdefault(view.labels[i].tobytes(), (name, i))
    conflicts = [(key, labels) for key, labels in seen.items() if len(labels) > 1]
    failures = []
    for (_, identifier), labels in conflicts[:MAX_FAILURES_LISTED]:
        places = [f"{usable[s].where('inputs', i)} ({usable[s].about(i)})" for s, i in labels.values()]
        failures.append(
            f"one input with puzzle identifier {identifier} carries {len(labels)} different labels: {_examples(places)}"
        )
    total, bad = sum(v.num_examples for v in usable.values()), sum(len(labels) for _, labels in conflicts)
    check = share_check("conflicting_labels", "tokens", description, failures, total, failure_count=bad)
    if conflicts:  # a header above the (at most MAX_FAILURES_LISTED) conflicts listed
        notes_text = f" ({'; '.join(notes)})" if notes else ""
        check.failures.insert(0, f"{len(conflicts)} inputs carry conflicting labels{notes_text}")
    return check


def map_checks(
    views: dict[str, RawSplit], near_share: float, across: bool = True
) -> tuple[list[Check], dict]:
    """Identical base maps (critical: the same city twice is one scenario counted twice, or a leak across
    splits) and near-identical ones (share of equal cells above `near_share`: reported, not scored)."""
    description = "no two base scenarios share an identical map" + (
        " (within and across splits)" if across else " (within a split)"
    )
    usable = {n: v for n, v in views.items() if v.inputs is not None}
    if not usable:
        reason = "no split has readable inputs"
        return [not_run("identical_maps", "augmentation_quality", description, reason)], {}
    maps = {n: base_maps(v, per_base=True) for n, v in usable.items()}
    findings, near_findings, figures = [], [], {}
    pairs = [(n, n) for n in usable] + ([tuple(p) for p in combinations(usable, 2)] if across else [])
    total = sum(len(m[1]) for m in maps.values())
    for a, b in pairs:
        (grids_a, idx_a), (grids_b, idx_b) = maps[a], maps[b]
        if grids_a.shape[1] != grids_b.shape[1]:
            continue
        share = equal_share_matrix(grids_a, grids_b)
        if a == b:
            share[np.tril_indices(len(idx_a))] = 0.0  # each pair once, no map with itself
        where = f"within {a}" if a == b else f"across {a} and {b}"
        identical = np.argwhere(share == 1.0)
        near = np.argwhere((share > near_share) & (share < 1.0))
        figures[f"audit_identical_map_pairs_{where.replace(' ', '_')}"] = len(identical)
        figures[f"audit_near_identical_map_pairs_{where.replace(' ', '_')}"] = len(near)
        if len(identical):
            maps_involved = len(
                {int(i) for i in identical[:, 0]}
                | {int(j) + (0 if a == b else 10**9) for j in identical[:, 1]}
            )
            examples = [
                f"{usable[a].where('inputs', idx_a[i])} ({usable[a].about(idx_a[i])}) = "
                f"{usable[b].where('inputs', idx_b[j])} ({usable[b].about(idx_b[j])})"
                for i, j in identical[:3]
            ]
            message = f"{len(identical)} pairs of base maps identical {where}, e.g. {'; '.join(examples)}"
            findings.append((message, min(maps_involved, total)))
        if len(near):
            i, j = near[0]
            message = (
                f"{len(near)} pairs of base maps near-identical {where} (> {near_share:g} of cells equal), e.g. "
                f"{usable[a].where('inputs', idx_a[i])} and {usable[b].where('inputs', idx_b[j])}: "
                f"{share[i, j]:.3f} equal"
            )
            near_findings.append((message, len(near)))
    checks = [
        finding_check("identical_maps", "augmentation_quality", description, findings, max(total, 1)),
        finding_check(
            "near_identical_maps",
            "consistency",
            f"base maps with more than {near_share:g} of their cells equal (reported, not scored)",
            near_findings,
            max(total * (total - 1) // 2, 1),
            critical=False,
        ),
    ]
    return checks, figures


def vehicle_labels_check(views: dict[str, RawSplit]) -> Check:
    """Two vehicles with the same label in every base they share: they are one vehicle to the model."""
    description = "no two vehicles have identical labels in every base"
    per_vehicle: dict[str, dict[tuple[str, str], bytes]] = defaultdict(dict)
    for name, view in views.items():
        if view.labels is None or view.base_scenario_ids is None or view.vehicle_types is None:
            continue
        for i in range(view.num_examples):
            per_vehicle[str(view.vehicle_types[i])][(name, str(view.base_scenario_ids[i]))] = view.labels[
                i
            ].tobytes()
    if len(per_vehicle) < 2:
        reason = "fewer than two vehicles with readable labels, base ids and vehicle names"
        return not_run("vehicle_labels_distinct", "augmentation_quality", description, reason)
    findings = []
    pairs = list(combinations(sorted(per_vehicle), 2))
    for a, b in pairs:
        shared = per_vehicle[a].keys() & per_vehicle[b].keys()
        same = [base for base in shared if per_vehicle[a][base] == per_vehicle[b][base]]
        if shared and len(same) == len(shared):
            findings.append(
                (
                    f"vehicles {shown(a)} and {shown(b)} have identical labels in all {len(shared)} bases they share",
                    1,
                )
            )
    return finding_check("vehicle_labels_distinct", "augmentation_quality", description, findings, len(pairs))


def hrm_metadata_check(views: dict[str, RawSplit], identifiers: Any) -> Check:
    """What dataset.json tells HRM (seq_len, vocab_size, num_puzzle_identifiers) against the arrays."""
    description = "seq_len, vocab_size and num_puzzle_identifiers in dataset.json equal what the arrays hold"
    findings: list[tuple[str, int]] = []
    compared = 0
    for view in views.values():
        meta = view.metadata
        if meta is None:
            findings.append((f"{view.files['dataset']}: not readable as HRM metadata", 1))
            compared += 1
            continue
        grids = [g for g in (view.inputs, view.labels) if g is not None]
        facts = {}
        if grids:
            facts["seq_len"] = int(grids[0].shape[1])
            facts["vocab_size"] = int(max(int(g.max()) for g in grids)) + 1
        if isinstance(identifiers, list):
            facts["num_puzzle_identifiers"] = len(identifiers)
        for key, held in facts.items():
            compared += 1
            claim = meta.get(key)
            wrong = claim != held if key != "vocab_size" else not isinstance(claim, int) or claim < held
            if wrong:
                what = "the largest token + 1" if key == "vocab_size" else "the files"
                findings.append((f"{view.files['dataset']}: {key} = {shown(claim)}, {what}: {held}", 1))
        rows, cols = meta.get("rows"), meta.get("cols")
        if isinstance(rows, int) and isinstance(cols, int) and "seq_len" in facts:
            compared += 1
            if rows * cols != facts["seq_len"]:
                message = f"{view.files['dataset']}: rows x cols = {rows} x {cols} but the grids hold {facts['seq_len']} cells"
                findings.append((message, 1))
    return finding_check("hrm_metadata", "tokens", description, findings, max(compared, 1))


def ignore_label_check(views: dict[str, RawSplit]) -> Check:
    """Labels holding the ignore label drop those cells out of HRM's loss (the first attempt's 100% that
    meant nothing): every cell must be a real target."""
    description = "no label cell holds the ignore label (every cell is a target)"
    findings: list[tuple[str, int]] = []
    total = 0
    for view in views.values():
        if view.labels is None:
            continue
        ignore = (view.metadata or {}).get("ignore_label_id", spec.PAD)
        total += view.num_examples
        rows = np.flatnonzero((view.labels == ignore).any(axis=1)).tolist()
        if rows:
            cells = int((view.labels == ignore).sum())
            message = (
                f"{view.where('labels')}: {len(rows)} labels hold {cells} cells of the ignore label {ignore}, "
                f"e.g. examples {_examples(rows)}"
            )
            findings.append((message, len(rows)))
    if not total:
        return not_run("labels_cover_every_cell", "tokens", description, "no readable labels")
    return finding_check("labels_cover_every_cell", "tokens", description, findings, total)


def generic_checks(
    views: dict[str, RawSplit], identifiers: Any, near_share: float, across: bool
) -> tuple[list[Check], dict]:
    """The checks that need no cost model and no strict layer: run on every file set."""
    maps, figures = map_checks(views, near_share, across=across)
    checks = [
        identifier_check(views, identifiers),
        conflicting_labels_check(views),
        *maps,
        vehicle_labels_check(views),
        hrm_metadata_check(views, identifiers),
        ignore_label_check(views),
    ]
    return checks, figures


def base_overlap_check(views: dict[str, RawSplit]) -> Check:
    description = "no base scenario id in both splits"
    train, test = views["train"], views["test"]
    if train.base_scenario_ids is None or test.base_scenario_ids is None:
        return not_run("base_overlap", "methodology", description, "base ids unreadable")
    shared = sorted({str(b) for b in train.base_scenario_ids} & {str(b) for b in test.base_scenario_ids})
    findings = (
        [(f"{len(shared)} base ids in both splits, e.g. {_examples(shared)}", len(shared))] if shared else []
    )
    return finding_check(
        "base_overlap",
        "methodology",
        description,
        findings,
        max(len(set(map(str, test.base_scenario_ids))), 1),
    )
