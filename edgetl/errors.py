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
