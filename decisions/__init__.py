"""The decisions taken from what was measured, apart from the training stack:

- ``results.py``: reads what the pipeline and the trainer wrote (manifests, ``results.json``,
  run folders) into rows the others share;
- ``report.py``: the paper's Table 1, Fig. 4 (rate-accuracy) and Fig. 5 (cross-setting);
- ``recommend.py``: the best measured (setting, model) for a bandwidth budget;
- ``predict.py``: the receiver, classifying the bitstreams cameras send.

``python -m decisions.report|recommend|predict`` (or ``m2m-report``, ``m2m-recommend``,
``m2m-predict``); ``python -m trainer.report|recommend|predict`` still work.
"""
