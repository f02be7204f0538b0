"""``python -m trainer.report``: the command users know, kept; it lives in :mod:`decisions.report`
(``python -m decisions.report``, console script ``m2m-report``)."""
import sys

from decisions.report import cli, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
