"""Model cards of exported models: one JSON document and its Markdown rendering.

The card is written by :func:`nas_asc.export.export_study` after the exported ONNX model has been
re-verified, so every figure in it is re-measured on the exported files: accuracies of the float,
PyTorch int8 and ONNX Runtime models on the held-out split (overall and per device), the
complexity recounted from the ONNX graph next to the trial's count, and the checks that passed.
A card is never written for a model that failed a check.

JSON layout (``format: nas-asc-model-card/1``): ``name``, ``created``, ``source`` (study, trial,
seed), ``model`` (family, config, pruned filters, class labels), ``frontend`` (front-end fields,
input shape, standardization), ``training`` (recipe, calibration, quantization), ``data``,
``budget``, ``complexity`` (``dcase``: figures under the DCASE rule recounted from the graph;
``search``: the trial's figures; ``onnx_graph``: the raw graph recount), ``accuracy`` (``fp32``,
``int8_pytorch``, ``int8_onnx``, ``study``), ``verification`` (``passed``, ``tolerance_pp``,
``checks``), ``runtime`` (package versions, opset) and ``files`` (size and SHA-256 of each file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CARD_FORMAT", "card_markdown", "file_digest", "write_card"]

CARD_FORMAT = "nas-asc-model-card/1"


def file_digest(path: str | Path) -> dict[str, Any]:
    """Size in bytes and SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def _pct(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{100.0 * float(value):.2f} %"
    except (TypeError, ValueError):
        return "-"


def _int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _cell(value: Any) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _fields(mapping: Mapping[str, Any]) -> list[str]:
    return _table(["field", "value"], [[f"`{k}`", _cell(v)] for k, v in mapping.items()])


def card_markdown(card: Mapping[str, Any]) -> str:
    """Render a model card dictionary as Markdown."""
    src, model, acc = card["source"], card["model"], card["accuracy"]
    dcase, search = card["complexity"]["dcase"], card["complexity"]["search"]
    graph, budget = card["complexity"]["onnx_graph"], card["budget"]
    verification = card["verification"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"{model['family']} from trial {src['trial']} of study `{src['study']}`, exported as an "
        f"int8 ONNX model and re-verified with ONNX Runtime on the {acc['n_clips']:,} clips of "
        f"{acc['split']}. Created {card['created']}.",
        "",
        "## Summary",
        "",
    ]
    lines += _table(
        ["figure", "value", "budget"],
        [
            ["int8 accuracy (ONNX Runtime)", _pct(acc["int8_onnx"]["accuracy"]), ""],
            ["int8 accuracy (PyTorch)", _pct(acc["int8_pytorch"]["accuracy"]), ""],
            ["fp32 accuracy (PyTorch)", _pct(acc["fp32"]["accuracy"]), ""],
            ["MACs per clip (DCASE rule)", _int(dcase["macs"]), _int(budget["max_macs"])],
            [
                "parameter bytes (DCASE rule)",
                _int(dcase["param_bytes"]),
                _int(budget["max_param_bytes"]),
            ],
            ["parameters", _int(dcase["params"]), ""],
        ],
    )
    lines += ["", "## Accuracy per device", ""]
    devices = sorted(
        set(acc["fp32"]["accuracy_by_device"]) | set(acc["int8_onnx"]["accuracy_by_device"]),
        key=lambda d: (len(d), d),
    )
    rows = []
    for device in devices:
        rows.append(
            [device]
            + [
                _pct(acc[key]["accuracy_by_device"].get(device))
                for key in ("fp32", "int8_pytorch", "int8_onnx")
            ]
            + [_pct((acc.get("study") or {}).get("accuracy_by_device", {}).get(device))]
        )
    for label, key in (("seen devices", "seen_accuracy"), ("unseen devices", "unseen_accuracy")):
        rows.append(
            [f"*{label}*"]
            + [_pct(acc[k].get(key)) for k in ("fp32", "int8_pytorch", "int8_onnx")]
            + [_pct((acc.get("study") or {}).get(key))]
        )
    lines += _table(
        ["device", "fp32", "int8 PyTorch", "int8 ONNX", "int8 in study (validation split)"], rows
    )
    lines += [
        "",
        f"fp32, int8 PyTorch and int8 ONNX: re-measured on {acc['split']}; int8 in study: what "
        "the search measured on its validation split (held-out locations of the training data, "
        "seen devices only), so that column has no unseen devices.",
    ]
    if acc.get("onnx_pytorch_agreement") is not None:
        lines += [
            "",
            f"ONNX Runtime and PyTorch int8 predict the same scene on "
            f"{_pct(acc['onnx_pytorch_agreement'])} of the clips.",
        ]
    lines += [
        "",
        "## Complexity",
        "",
        "DCASE rule: one MAC per multiply-accumulate, BatchNorm charged 2C (folded), parameters at "
        "their stored dtype (int8 = 1 byte, float layers 4 bytes); scales and zero points are "
        "quantization metadata. Recounted from the ONNX graph (weights exactly; bias and "
        "BatchNorm terms of the float model, which folding removes from the graph).",
        "",
    ]
    lines += _table(
        ["figure", "exported (recounted)", "search (trial)"],
        [
            ["MACs", _int(dcase["macs"]), _int(search.get("macs"))],
            ["parameter bytes", _int(dcase["param_bytes"]), _int(search.get("param_bytes"))],
            ["parameters", _int(dcase["params"]), _int(search.get("params"))],
        ],
    )
    shape = "x".join(str(d) for d in graph["input_shape"])
    lines += ["", f"As stored in the ONNX graph (input {shape}):", ""]
    lines += _table(
        ["graph figure", "value"],
        [
            ["weight MACs (Conv, Gemm, MatMul)", _int(graph["weight_macs"])],
            ["bias adds (one per output element)", _int(graph["bias_adds"])],
            ["MACs + adds executed", _int(graph["graph_macs"])],
            [
                "weight bytes (int8 weights, float32 float-layer params)",
                _int(graph["weight_bytes"]),
            ],
            ["bias bytes (int32)", _int(graph["bias_bytes"])],
            ["parameter bytes as stored", _int(graph["stored_param_bytes"])],
            ["quantization metadata bytes", _int(graph["quant_metadata_bytes"])],
            ["other constant bytes", _int(graph["constant_bytes"])],
            ["all initializer bytes in the file", _int(graph["initializer_bytes"])],
        ],
    )
    lines += _tflite_lines(card.get("tflite_micro"))
    lines += ["", "## Configuration", ""] + _fields(model["config"])
    if model.get("searched"):
        lines += ["", "Searched dimensions of this trial:", ""] + _fields(model["searched"])
    if model.get("pruned"):
        lines += ["", "Pruned filters kept per layer:", ""] + _fields(model["pruned"])
    frontend = card["frontend"]
    lines += ["", "## Front end", "", frontend["description"], ""]
    lines += _fields({k: v for k, v in frontend.items() if k not in ("description", "exact")})
    if frontend.get("exact"):
        lines += [
            "",
            "Every parameter of the front end, for a firmware to compute the same input:",
            "",
        ]
        lines += _table(
            ["stage", "parameters"], [[k, _cell(v)] for k, v in frontend["exact"].items()]
        )
    lines += ["", "## Training recipe", ""] + _fields(card["training"]["recipe"])
    lines += [
        "",
        f"Seed {card['training']['seed']}. Int8: {card['training']['quantization']} Calibrated "
        f"on {card['training']['calibration']['n']} training clips (seed "
        f"{card['training']['calibration']['seed']}).",
        "",
        "## Budget",
        "",
    ]
    lines += _fields(budget)
    lines += ["", "## Data", ""] + _fields(card["data"])
    status = "passed" if verification["passed"] else "FAILED"
    lines += [
        "",
        "## Verification",
        "",
        f"All checks {status} (accuracy tolerance {verification['tolerance_pp']} percentage "
        "points).",
        "",
    ]
    lines += _table(
        ["check", "value", "reference", "limit", "passed"],
        [
            [
                c["name"],
                _cell(c["value"]),
                _cell(c["reference"]),
                _cell(c["limit"]),
                "yes" if c["passed"] else "NO",
            ]
            for c in verification["checks"]
        ],
    )
    lines += ["", "## Files", ""]
    lines += _table(
        ["file", "bytes", "sha256"],
        [[f, _int(info["bytes"]), f"`{info['sha256']}`"] for f, info in card["files"].items()],
    )
    lines += ["", "## Runtime", ""] + _fields(card["runtime"])
    return "\n".join(lines) + "\n"


def _tflite_lines(tfl: Mapping[str, Any] | None) -> list[str]:
    """The microcontroller section: what TensorFlow Lite Micro allocates and computes."""
    if not tfl:
        return []
    arena, inp, out = tfl["arena_bytes"], tfl["input"], tfl["output"]
    lines = [
        "",
        "## On the microcontroller runtime",
        "",
        f"`{tfl['file']}`: full-integer TFLite (int8 weights and activations, int32 biases), "
        f"run in {tfl['runtime']}.",
        "",
    ]
    lines += _table(
        ["figure", "value"],
        [
            ["flash (flatbuffer bytes)", _int(tfl["flash_bytes"])],
            ["tensor arena, head (activations, planned)", _int(arena["head"])],
            ["tensor arena, tail (persistent)", _int(arena["tail"])],
            ["tensor arena, total", _int(arena["total"])],
            ["int8 accuracy (TensorFlow Lite Micro)", _pct(tfl["accuracy"]["accuracy"])],
            ["same scene as PyTorch int8", _pct(tfl["pytorch_agreement"])],
        ],
    )
    lines += [
        "",
        f"Input: int8 {'x'.join(str(d) for d in inp['shape'])} ({inp['layout']}), scale "
        f"{inp['scale']!r}, zero point {inp['zero_point']}: {inp['quantize']}. Output: "
        f"{out['meaning']} (scale {out['scale']!r}, zero point {out['zero_point']}).",
    ]
    if inp.get("front_end_layers"):
        lines += [
            "",
            "Front-end layers the firmware computes in float on the features before quantizing "
            "them (the int8 model runs them so too): " + ", ".join(inp["front_end_layers"]) + ".",
        ]
    lines += [
        "",
        "Operators the firmware's resolver needs: " + ", ".join(tfl["ops"]) + ".",
    ]
    return lines


def write_card(card: Mapping[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """Write ``card.json`` and ``card.md`` into ``directory``; returns their paths."""
    directory = Path(directory)
    json_path, md_path = directory / "card.json", directory / "card.md"
    json_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(card_markdown(card), encoding="utf-8")
    return json_path, md_path
