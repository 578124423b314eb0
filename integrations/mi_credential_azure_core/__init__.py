"""An azure-core pipeline policy that attaches managed identity tokens."""

__all__: list[str] = []
