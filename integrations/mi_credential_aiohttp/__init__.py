"""aiohttp client middleware that signs outbound requests with managed identity tokens."""

__all__: list[str] = []
