"""One small error hierarchy. Every message says what went wrong and what to do next."""


class EdgetlError(Exception):
    """Root of every error edgetl raises on purpose; the CLI prints it as one line."""

    exit_code = 1


class RecipeError(EdgetlError):
    """A recipe key or value is wrong."""

    exit_code = 2


class DataError(EdgetlError):
    """Input data is missing, unreadable or inconsistent."""


class WeightsError(EdgetlError):
    """Pre-trained weights are missing or do not match the architecture."""


class ExportError(EdgetlError):
    """A model could not be exported to a format."""


class BackendUnavailable(EdgetlError):
    """An optional runtime (onnxruntime, openvino, torch) is not installed or cannot load."""


class ValidationFailed(EdgetlError):
    """An artifact failed the validation gate."""


class BundleError(EdgetlError):
    """A bundle is missing files, or its checksums do not match."""


class CalibrationError(DataError):
    """A calibration set is empty, too small, or does not fit the model's input."""


class QuantizationError(EdgetlError):
    """A model could not be quantized."""


class QuantizationSkipped(QuantizationError):
    """One quantization variant cannot be made here (an operator its backend cannot quantize, a missing
    backend); the pipeline reports the reason and goes on with the other variants."""


class TargetError(EdgetlError):
    """A target profile is missing or has a bad key or value."""

    exit_code = 2


class RemoteError(EdgetlError):
    """A target could not be measured: unreachable, refused, timed out, or nothing runs there.

    ``kind`` says which ("unreachable", "host-key", "auth", "timeout", "missing", "runtime", "agent");
    ``partial`` holds what was measured before it failed."""

    def __init__(self, message: str, *, kind: str, partial=None):
        super().__init__(message)
        self.kind = kind
        self.partial = partial
