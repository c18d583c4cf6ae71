"""The TFLite model of an export as a C header a TensorFlow Lite Micro firmware compiles in.

``model_int8_tflite.h`` holds

* the flatbuffer (``model_int8.tflite``, byte for byte) as a ``const`` array aligned to 16
  bytes, with its length;
* the tensor arena TensorFlow Lite Micro allocated for it (``..._ARENA_BYTES``: head plus tail as
  its recording allocator reported them, measured with the x86-64 build of ``tflite-micro``; a
  32-bit target keeps smaller pointers in the persistent tail);
* the input and output quantization (scale, zero point, shape) as constants;
* in C++ only, the operators the model needs, registered on a ``MicroMutableOpResolver`` (define
  ``NAS_ASC_NO_TFLM`` to leave that part out, e.g. in a build without TFLite Micro's headers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["RESOLVER_METHODS", "tflite_c_header", "write_tflite_c_header"]

#: ``MicroMutableOpResolver`` method that registers each builtin operator the converter writes
RESOLVER_METHODS = {
    "ADD": "AddAdd",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "FULLY_CONNECTED": "AddFullyConnected",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "RESHAPE": "AddReshape",
}

_PER_LINE = 16


def _prefix(name: str) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_").lower() or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def tflite_c_header(model: Any, arena: Any, name: str, versions: dict[str, str]) -> str:
    """The header's text for a :class:`~nas_asc.deploy.tflite.TfliteModel` and its measured
    :class:`~nas_asc.deploy.tflite.Arena`; ``versions`` names nas-asc's and tflite-micro's."""
    p = _prefix(name)
    P = p.upper()
    missing = [op for op in model.ops if op not in RESOLVER_METHODS]
    if missing:
        raise ValueError(f"no resolver method known for {', '.join(missing)}")
    data = bytes(model.data)
    rows = [
        "  " + ", ".join(f"0x{b:02x}" for b in data[i : i + _PER_LINE]) + ","
        for i in range(0, len(data), _PER_LINE)
    ]
    shape = "x".join(str(d) for d in model.input_shape)
    front = (
        f" *   front end: the firmware computes {', '.join(model.front_layers)} in float on the\n"
        " *   normalized log-mel before quantizing (see card.md)\n"
        if model.front_layers
        else ""
    )
    adds = "\n".join(
        f"  if (resolver.{RESOLVER_METHODS[op]}() != kTfLiteOk) return kTfLiteError;"
        for op in model.ops
    )
    nas, tflm = versions["nas_asc"], versions["tflite_micro"]
    return f"""/* {p}_tflite: the int8 TFLite model of {name} for TensorFlow Lite Micro.
 * Written by nas-asc {nas}; arena measured with tflite-micro {tflm}.
 *   input:  int8 {shape} (NHWC: 1, n_mels, frames, channels),
 *           q = clamp(round(x / {P}_INPUT_SCALE) + {P}_INPUT_ZERO_POINT, -128, 127),
 *           x the normalized log-mel (card.md: front end and normalization)
{front} *   output: int8 logits, (q - {P}_OUTPUT_ZERO_POINT) * {P}_OUTPUT_SCALE; class = argmax
 *   arena:  head {arena.head} (activations) + tail {arena.tail} (persistent) bytes
 */
#ifndef {P}_TFLITE_H
#define {P}_TFLITE_H

#include <stdint.h>

#define {P}_MODEL_LEN {len(data)}u
#define {P}_ARENA_BYTES {arena.total}u
#define {P}_INPUT_SCALE {model.input_scale!r}f
#define {P}_INPUT_ZERO_POINT ({model.input_zero_point})
#define {P}_OUTPUT_SCALE {model.output_scale!r}f
#define {P}_OUTPUT_ZERO_POINT ({model.output_zero_point})
#define {P}_NUM_OPS {len(model.ops)}

#if defined(__cplusplus)
alignas(16) static const uint8_t {p}_model[{P}_MODEL_LEN] = {{
#else
_Alignas(16) static const uint8_t {p}_model[{P}_MODEL_LEN] = {{
#endif
{chr(10).join(rows)}
}};

#if defined(__cplusplus) && !defined(NAS_ASC_NO_TFLM)
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

/* The operators {p}_model needs: {", ".join(model.ops)}. */
inline TfLiteStatus {p}_register_ops(tflite::MicroMutableOpResolver<{P}_NUM_OPS>& resolver) {{
{adds}
  return kTfLiteOk;
}}
#endif

#endif /* {P}_TFLITE_H */
"""


def write_tflite_c_header(
    model: Any, arena: Any, path: str | Path, name: str, versions: dict[str, str]
) -> Path:
    """Write :func:`tflite_c_header` to ``path``; returns it."""
    path = Path(path)
    path.write_text(tflite_c_header(model, arena, name, versions), encoding="utf-8")
    return path
