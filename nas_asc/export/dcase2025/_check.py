"""The checks of a written DCASE 2025 inference package, run in a fresh interpreter.

nas-asc copies this file outside the package and runs it as ``python check.py REQUEST.json``
with the package's folder on ``PYTHONPATH`` and nas-asc made unimportable, so what it sees is
what the organizers see: the package alone. For every submission module it follows the
published API and the organizers' checker (``test_complexity.py``, ``complexity.py``): import
``<label>.<label>_<k>``, ``load_model()``, ``load_inputs`` on ``resources/dummy.wav`` for every
device ID, ``get_model_for_device``, torchinfo's ``total_mult_adds`` of a float copy and the
bytes of ``parameters()`` by dtype; then ``predict`` on the clips of the request, whose logits it
saves for nas-asc to compare. It writes a JSON result and imports nothing of nas-asc.
"""

import copy
import importlib
import importlib.resources
import json
import sys
import traceback

sys.modules["nas_asc"] = None  # the package must run without nas-asc: importing it now fails

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchinfo  # noqa: E402

BYTES = {
    torch.float32: 4,
    torch.float16: 2,
    torch.bfloat16: 2,
    torch.int8: 1,
    torch.uint8: 1,
    torch.int32: 4,
    torch.qint8: 1,
    torch.quint8: 1,
}


def macs_and_bytes(model, input_size):
    profiled = copy.deepcopy(model).float()
    macs = torchinfo.summary(profiled, input_size=tuple(input_size), verbose=0).total_mult_adds
    total = 0
    for p in model.parameters():
        if p.dtype not in BYTES:
            raise ValueError(f"parameter of unsupported dtype {p.dtype}")
        total += p.numel() * BYTES[p.dtype]
    return int(macs), int(total)


def check(request):
    label = request["label"]
    dummy = str(importlib.resources.files(f"{label}.resources") / "dummy.wav")
    out = {}
    for index in request["submissions"]:
        name = f"{label}.{label}_{index}"
        api = importlib.import_module(name)
        model = api.load_model()
        devices = request["device_ids"]
        inputs = api.load_inputs([dummy] * len(devices), devices, model)
        per_device = {}
        for tensor, device in zip(inputs, devices, strict=True):
            sub = api.get_model_for_device(model, device)
            macs, nbytes = macs_and_bytes(sub, tensor.shape)
            per_device[device] = {"MACs": macs, "Params": nbytes, "shape": list(tensor.shape)}
        logits, classes = api.predict(
            request["files"], request["file_devices"], model_file_path=None, use_cuda=False
        )
        stacked = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in logits])
        path = f"{request['work']}/logits_{index}.npy"
        np.save(path, stacked.numpy())
        out[str(index)] = {"per_device": per_device, "class_order": classes, "logits": path}
    return out


def main():
    with open(sys.argv[1]) as f:
        request = json.load(f)
    try:
        result = {"ok": True, "submissions": check(request)}
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to nas-asc
        last = traceback.format_exception(exc)[-1].strip()
        result = {"ok": False, "error": last, "traceback": traceback.format_exc()}
    with open(request["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
