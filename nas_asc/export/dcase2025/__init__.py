"""DCASE 2025 Task 1: the 2025 checker's count and the inference package.

* :mod:`~nas_asc.export.dcase2025.netgen`: nas-asc's int8 models as stand-alone networks
  (generated source over PyTorch functions), and the checker's count of them (the
  ``dcase2025`` budget rule);
* :mod:`~nas_asc.export.dcase2025.runtime`: copied into every package (no nas-asc imports);
* :mod:`~nas_asc.export.dcase2025.package`: ``nas-asc export --format dcase2025``.
"""
