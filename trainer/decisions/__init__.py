"""The decisions taken from what was measured, above the training stack (which they read, never
the other way round):

- ``results.py``: reads what the pipeline and the trainer wrote (manifests, ``results.json``,
  run folders) into rows the others share;
- ``report.py``: the paper's Table 1, Fig. 4 (rate-accuracy) and Fig. 5 (cross-setting);
- ``recommend.py``: the best measured (setting, model) for a bandwidth budget;
- ``predict.py``: the receiver, classifying the bitstreams cameras send.

``python -m trainer.decisions.report|recommend|predict`` (or ``m2m-report``, ``m2m-recommend``,
``m2m-predict``).  The reports import no torch (``predict`` does, when it classifies).
"""
