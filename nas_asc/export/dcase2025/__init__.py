"""DCASE 2025 Task 1: the inference package (``nas-asc export --format dcase2025``,
:mod:`~nas_asc.export.dcase2025.package`). The stand-alone networks it ships and the 2025
checker's count of them are :mod:`nas_asc.deploy` (the ``dcase2025`` budget rule counts with
them too); :mod:`~nas_asc.deploy.runtime` is copied into every package.
"""
