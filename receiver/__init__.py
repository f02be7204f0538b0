"""The receiver: the server side that classifies the bitstreams cameras send, each by the
expert of its codec and rate.

- ``core.py``: :class:`~receiver.core.Receiver`, the probe-and-route core: a bitstream's
  headers probed once, the model chosen, the picture decoded, then classified;
- ``route.py``: the routing rule, from the bitstream's headers and the experts' training
  settings (no torch);
- ``zoo.py``: the experts (and a default) a receiver holds, loaded once;
- ``predict.py``: ``m2m-predict``, the receiver on files;
- ``serve.py``: ``m2m-serve``, the receiver as an HTTP service (extra ``[serve]``).

It sits above the trainer, whose models and checkpoints it loads.  The rule and the
endpoints are described in docs/receiver.md.
"""
