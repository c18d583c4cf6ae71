"""nas-asc: architecture and hyperparameter search for low-complexity acoustic scene classification.

Importing the package is cheap: heavy and optional parts (Ray, ONNX, the dashboard) are imported
by the commands that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
