"""`tapper serve`: the HTTP service (FastAPI) over a TapperEngine and a UserStore."""

from tapper.serve.app import create_app
from tapper.serve.auth import create_api_key, hash_api_key
from tapper.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_api_key", "create_app", "hash_api_key"]
