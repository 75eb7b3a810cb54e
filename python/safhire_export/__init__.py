"""safhire_export: PyTorch -> safhire integer model files (spec/model-format.md).

    from safhire_export import export, write_model, write_test_set, evaluate

`spec` (format rules, MODEL-5 bounds) and `reference` (integer evaluator)
need only numpy; `export` and friends import torch on first use, so the
package imports without torch.
"""
import json

from .reference import evaluate
from .spec import FormatError, bounds, check_accumulators, check_fields, infer_shapes, to_json

_TORCH_NAMES = ("export", "export_with_report", "ExportError", "quantize_input", "compare",
                "folded_forward", "requant_params")


def __getattr__(name):  # lazy: only the exporter needs torch
    if name in _TORCH_NAMES:
        from . import torch_export as _export_module

        return getattr(_export_module, name)
    raise AttributeError(name)


def write_model(path, model):
    """Validate and write a model dict as canonical compact JSON (MODEL-8), plus a newline."""
    check_fields(model)
    infer_shapes(model)
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_json(model) + "\n")


def _dump_lists(obj):
    """JSON with one sample per line, like models/digits-test.json: diffable, compact."""
    parts = []
    for k, v in obj.items():
        body = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in v)
        parts.append(json.dumps(k) + ":[\n  " + body + "\n ]")
    return "{" + ",\n ".join(parts) + "}\n"


def write_test_set(path, inputs_int, labels, integer_logits=None):
    """{"inputs": [[int, ...], ...], "labels": [int, ...]} (inputs flattened CHW).
    integer_logits (optional) adds that key as models/digits-test.json has it;
    leave it out for `safhire infer --inputs`, whose parser refuses unknown keys."""
    obj = {"inputs": [[int(v) for v in row] for row in inputs_int],
           "labels": [int(v) for v in labels]}
    if len(obj["inputs"]) != len(obj["labels"]):
        raise ValueError("inputs and labels differ in length")
    if integer_logits is not None:
        obj["integer_logits"] = [[int(v) for v in row] for row in integer_logits]
    with open(path, "w", encoding="utf-8") as f:
        f.write(_dump_lists(obj))


__all__ = ["evaluate", "bounds", "check_accumulators", "check_fields", "infer_shapes", "to_json",
           "FormatError", "write_model", "write_test_set", *_TORCH_NAMES]
