"""``python -m trainer.recommend``: the command users know, kept; it lives in :mod:`decisions.recommend`
(``python -m decisions.recommend``, console script ``m2m-recommend``)."""
import sys

from decisions.recommend import cli, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
