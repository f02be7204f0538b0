"""``python -m trainer.predict``: the command users know, kept; it lives in :mod:`decisions.predict`
(``python -m decisions.predict``, console script ``m2m-predict``)."""
import sys

from decisions.predict import cli, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
