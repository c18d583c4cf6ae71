"""Export of searched models: int8 ONNX, model cards and C headers, re-verified after export.

``export_study(study, out_dir)`` exports the Pareto set of a study (or chosen trials); see
:mod:`nas_asc.export.study`. ONNX and ONNX Runtime are imported only when a model is exported
(``pip install 'nas-asc[onnx]'``).
"""

from nas_asc.export.study import EXPORT_FORMAT, ExportError, ExportResult, export_study

__all__ = ["EXPORT_FORMAT", "ExportError", "ExportResult", "export_study"]
