"""HTTP layer: thin route handlers, admission control, error mapping; the app is built in service.main."""

from service.api.routes_health import router as health_router
from service.api.routes_models import router as models_router
from service.api.routes_predict import router as predict_router

__all__ = ["health_router", "models_router", "predict_router"]
