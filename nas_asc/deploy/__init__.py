"""nas-asc's int8 models as they ship, below the counting and the exports.

* :mod:`~nas_asc.deploy.runtime`: int8 layers over PyTorch's quantized kernels that keep their
  weights as ``int8`` parameters; it imports nothing from nas-asc, so the DCASE 2025 package
  ships a copy of it;
* :mod:`~nas_asc.deploy.netgen`: a converted int8 model as a stand-alone network over those
  layers and PyTorch functions, its Python source, and the DCASE 2025 checker's count of it
  (which :mod:`nas_asc.complexity` uses for the ``dcase2025`` budget rule);
* :mod:`~nas_asc.deploy.tflite`: that network as a full-integer TFLite flatbuffer, run and
  measured (arena, flash) in TensorFlow Lite Micro (optional extra ``nas-asc[tflite]``).
"""
