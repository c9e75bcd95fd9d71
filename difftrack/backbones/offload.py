"""Where a backbone's models live: components that load on first use, and diffusers' model CPU offload."""

from __future__ import annotations

from typing import Any, Callable


class Deferred:
    """A component not loaded yet: ``loader()`` builds it on first use (text encoders, which tracking and
    analysis of real videos never need once the empty prompt's embedding is cached)."""

    def __init__(self, loader: Callable[[], Any]):
        self.loader = loader


class Component:
    """An adapter attribute that may hold a :class:`Deferred`; reading it loads the component once."""

    def __set_name__(self, owner, name):
        self.slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        value = obj.__dict__.get(self.slot)
        if isinstance(value, Deferred):
            value = obj.__dict__[self.slot] = obj.offload_if_enabled(value.loader())
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value

    def loaded(self, obj) -> bool:
        return not isinstance(obj.__dict__.get(self.slot), Deferred)


class ModelOffload:
    """Backbone mixin: the device computation runs on, and model CPU offload of the adapter's models."""

    _execution_device = None  # the device models move to while they run, once offload is on

    def enable_model_cpu_offload(self, device) -> None:
        """diffusers' model CPU offload: every model (transformer, VAE, text encoders, those loaded later
        too) stays in CPU memory and moves to ``device`` only while it runs, one model there at a time
        (accelerate's offload hooks). The peak is the largest model instead of their sum; each switch costs
        a host-to-device copy of that model's weights."""
        import torch

        self._execution_device = torch.device(device)
        self._offload_hooks = []  # accelerate's hooks, one a model
        for model in [self.transformer, self.vae] + [getattr(self, name) for name in self.loaded_text_encoders()]:
            self.offload_if_enabled(model)

    def offload_if_enabled(self, model):
        """Give ``model`` an offload hook when model CPU offload is on (a no-op otherwise). The hook runs
        before ``forward`` and before the VAEs' ``encode``/``decode`` (diffusers' ``apply_forward_hook``)."""
        if self._execution_device is None or model is None:
            return model
        from accelerate.hooks import CpuOffload, UserCpuOffloadHook, add_hook_to_module

        hooks = self._offload_hooks

        class OffloadTheOthers(CpuOffload):
            def pre_forward(self, module, *args, **kwargs):
                for other in hooks:
                    if other.model is not module:
                        other.offload()
                return super().pre_forward(module, *args, **kwargs)

        hook = OffloadTheOthers(execution_device=self._execution_device)
        add_hook_to_module(model, hook, append=True)
        hooks.append(UserCpuOffloadHook(model, hook))
        return model

    def loaded_text_encoders(self) -> list[str]:
        """Names of the text-encoder components already loaded (deferred ones load on first use)."""
        names = {name for cls in type(self).__mro__ for name, attr in vars(cls).items() if isinstance(attr, Component)}
        return sorted(name for name in names if getattr(type(self), name).loaded(self))

    @property
    def device(self):
        """Where the computation runs (under model CPU offload, the device models move to while they run)."""
        if self._execution_device is not None:
            return self._execution_device
        return next(self.transformer.parameters()).device
