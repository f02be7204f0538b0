"""The decisions taken from what was measured, above the training stack (which they read, never
the other way round):

- ``results.py``: reads what the pipeline and the trainer wrote (manifests, ``results.json``,
  run folders) into rows the others share;
- ``report.py``: the paper's Table 1, Fig. 4 (rate-accuracy) and Fig. 5 (cross-setting);
- ``recommend.py``: the best measured (setting, model) for a bandwidth budget;
- ``predict.py``: the receiver, classifying the bitstreams cameras send;
- ``route.py``: which expert answers a bitstream, from its headers (no torch);
- ``zoo.py``: the experts a receiver holds, loaded once;
- ``serve.py``: the receiver as an HTTP service (``m2m-serve``, extra ``[serve]``).

``python -m trainer.reports.report|recommend|predict|serve`` (or ``m2m-report``, ``m2m-recommend``,
``m2m-predict``, ``m2m-serve``).  The reports import no torch (``predict`` does, when it classifies).
"""
