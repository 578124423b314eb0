"""Pure ASGI middleware for Starlette and FastAPI apps that use a managed identity."""

__all__: list[str] = []
