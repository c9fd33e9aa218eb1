"""`python tests/standin_train.py params.yaml`: the train stage with the stand-in model (subprocess tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

import standin_model  # noqa: E402


class _Patch:
    def setattr(self, obj, name, value):
        setattr(obj, name, value)


if __name__ == "__main__":
    standin_model.install(_Patch())
    sys.argv = [sys.argv[0], "--params", sys.argv[1]]
    import runpy

    runpy.run_path(str(Path(__file__).parent.parent / "stages" / "train.py"), run_name="__main__")
