"""Errors a caller can act on. Each carries a message written for the person who sent the input."""


class LTUError(Exception):
    """Base class: a problem with the caller's input, not a bug."""


class DatasetFormatError(LTUError):
    """A dataset file or folder does not match the documented format."""


class ForgetSetError(LTUError):
    """A forget specification selects nothing, everything, or names unknown samples/subjects."""


class CheckpointError(LTUError):
    """A checkpoint is not a safetensors file written by this library, or does not fit its model."""


class UnknownMethodError(LTUError):
    """No unlearning method is registered under the given name."""


class MethodConfigError(LTUError):
    """An unlearning method was given an unknown parameter or a value of the wrong type."""


class UnlearningCancelled(Exception):
    """Raised inside a method when the caller's cancellation check returns True."""
