"""Packaging that pyproject.toml cannot say: install ``optimum_awp-autoload.pth`` into site-packages.

Its one line, ``import _optimum_awp_autoload``, makes every interpreter register quant_method "awp" with
transformers without ``import optimum_awp`` (see that module). setuptools puts the root of a wheel into
site-packages, but the two install modes build different wheels (checked against setuptools 68 and 84):

- ``pip install .`` builds a regular wheel from ``build_lib``: :class:`build_py` copies the .pth there;
- ``pip install -e .`` builds an editable wheel that holds only setuptools' own ``__editable__`` .pth and
  finder: the files in ``build_lib`` are dropped, while the "non-editable" files (scripts, data) are written
  into the unpacked wheel by ``editable_wheel._run_build_commands``; :class:`editable_wheel` writes the
  .pth there too. That method is internal to setuptools, so a setuptools without it fails the build loudly
  rather than giving an install without the hook (tests/test_autoload.py checks both wheels).

The name sorts after setuptools' ``__editable__.*.pth`` (``site`` reads .pth files in sorted order), so in an
editable install the finder that maps ``_optimum_awp_autoload`` to the source tree is in place first.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.editable_wheel import editable_wheel as _editable_wheel

PTH_NAME = "optimum_awp-autoload.pth"
PTH_LINE = "import _optimum_awp_autoload\n"


class build_py(_build_py):
    """Also write the .pth at the root of ``build_lib`` (the root of the regular wheel)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_NAME))]


class editable_wheel(_editable_wheel):
    """Also write the .pth at the root of the editable wheel."""

    def run(self):
        self._pth_written = False
        super().run()
        if not self._pth_written:
            raise RuntimeError(f"setuptools no longer calls editable_wheel._run_build_commands: setup.py could not "
                               f"put {PTH_NAME} into the editable wheel")

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        Path(unpacked_wheel, PTH_NAME).write_text(PTH_LINE)
        self._pth_written = True
        return outputs


setup(cmdclass={"build_py": build_py, "editable_wheel": editable_wheel})
