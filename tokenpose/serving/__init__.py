"""Scale-out: `tokenpose serve` (Ray Serve, request batching), its Python client, and the Ray Data job.

`Client` needs only the standard library; the server side imports Ray (the `serve` extra) inside
its functions.
"""

from tokenpose.serving.client import Client, ServingError, prediction_from_json
from tokenpose.serving.protocol import Limits, RequestError

__all__ = ["Client", "Limits", "RequestError", "ServingError", "prediction_from_json"]
