"""The HTTP routes, one router per concern: the SageMaker hosting contract (``sagemaker``),
Kubernetes health and Prometheus (``health``), what the server runs and the demo page
(``info``), and SageMaker's multi-model endpoint routes (``models``, multi-adapter mode only).

Each module's ``router(runtime)`` builds its APIRouter over the process's Runtime.
"""

# The paths the request metrics label by name (anything else is "other") and a 404 lists.
ROUTES = ("/ping", "/invocations", "/execution-parameters", "/health/live", "/health/ready",
          "/metrics", "/info", "/stats", "/openapi.json", "/docs")
