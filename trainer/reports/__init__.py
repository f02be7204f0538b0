"""The offline reports, above the training stack (which they read, never the other way round):

- ``results.py``: reads what the pipeline and the trainer wrote (manifests, ``results.json``,
  run folders) into rows the others share;
- ``report.py``: the paper's Table 1, Fig. 4 (rate-accuracy) and Fig. 5 (cross-setting), with
  ``figures.py``;
- ``retention.py``: the class-group view (``m2m-eval --group``);
- ``recommend.py``: the best measured (setting, model) for a bandwidth budget.

``python -m trainer.reports.report|recommend`` (or ``m2m-report``, ``m2m-recommend``).  No
module here imports torch.
"""
