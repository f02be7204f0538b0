"""``python -m trainer.cache_teacher``: the command of :mod:`trainer.teacher_cache`."""
import sys

from trainer.teacher_cache import cli, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
