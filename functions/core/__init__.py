"""The domain: models, ports, policies and use cases. Imports only the standard library."""
