"""Register quant_method "awp" with transformers in every interpreter, without ``import optimum_awp``.

optimum-awp installs ``optimum_awp-autoload.pth`` into site-packages (see setup.py); ``site`` runs its one
line, ``import _optimum_awp_autoload``, at interpreter start. This module is stdlib only and imports nothing
else: it puts a finder at the front of ``sys.meta_path`` that waits for ``transformers.quantizers.auto``.

When that module has finished executing, the finder registers placeholders for "awp" (and for the
spellings that are ours but that transformers would not match, such as "AWP") in transformers' two
registries, through transformers' own ``register_quantization_config`` / ``register_quantizer``. The
placeholders import nothing: transformers may be mid-import at that moment (``transformers.modeling_utils``
imports the registry), so importing optimum_awp, which imports torch and transformers, could cycle. The
first time transformers reads a config naming "awp", the placeholder imports optimum_awp, whose
``register()`` replaces every placeholder by the real class, and hands the call over to it.

Without this, a process that never imported optimum_awp would skip an unknown quant_method with a warning
and build plain ``nn.Linear`` layers with random weights. Set ``OPTIMUM_AWP_AUTOLOAD=0`` to turn it off.
"""

import os
import sys

TARGET = "transformers.quantizers.auto"
QUANT_METHOD = "awp"
# Spellings that name optimum-awp but that transformers (which matches names exactly) would skip.
MISSPELLINGS = ("AWP", "Awp", "aWp", "awP", "AWp", "AwP", "aWP", "optimum-awp", "optimum_awp")


def _real(mapping: dict, name: str, placeholder: type) -> type:
    """The class optimum_awp registers under ``name``, importing optimum_awp (which registers) first."""
    import optimum_awp  # noqa: F401  (its register() replaces the placeholders)

    target = mapping.get(name)
    if target is None or getattr(target, "_optimum_awp_placeholder", False):
        raise ImportError(f"optimum-awp is installed but importing it did not register quant_method {name!r} "
                          f"with transformers (found {target!r}).")
    return target


def register_placeholders(auto) -> None:
    """Put the placeholders into the registries of the module ``transformers.quantizers.auto``."""
    from transformers.quantizers.base import HfQuantizer  # already imported by ``auto``
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class AWPConfigPlaceholder(QuantizationConfigMixin):
        """Stands for optimum_awp's config class until optimum_awp is imported."""

        _optimum_awp_placeholder = True

        @classmethod
        def from_dict(cls, config_dict, *args, **kwargs):
            target = _real(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, config_dict.get("quant_method"), cls)
            return target.from_dict(config_dict, *args, **kwargs)

    class AWPQuantizerPlaceholder(HfQuantizer):
        """Stands for optimum_awp.AWPQuantizer until optimum_awp is imported."""

        _optimum_awp_placeholder = True

        def __new__(cls, quantization_config, *args, **kwargs):
            return _real(auto.AUTO_QUANTIZER_MAPPING, QUANT_METHOD, cls)(quantization_config, *args, **kwargs)

    for name in (QUANT_METHOD, *MISSPELLINGS):
        if name not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
            auto.register_quantization_config(name)(AWPConfigPlaceholder)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(AWPQuantizerPlaceholder)


class _Finder:
    """A meta path finder that only wraps the loader of ``transformers.quantizers.auto``."""

    _optimum_awp_autoload = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "_optimum_awp_autoload", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                register_placeholders(module)
            except Exception as err:  # never break ``import transformers`` for everyone
                import warnings

                warnings.warn(f"optimum-awp could not register quant_method 'awp' with transformers "
                              f"({type(err).__name__}: {err}); `import optimum_awp` before loading an awp "
                              "checkpoint.", RuntimeWarning, stacklevel=2)

        loader.exec_module = exec_then_register  # this loader instance serves this one module
        return spec


def install() -> None:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    if os.environ.get("OPTIMUM_AWP_AUTOLOAD", "1") == "0":
        return
    if not any(getattr(finder, "_optimum_awp_autoload", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
